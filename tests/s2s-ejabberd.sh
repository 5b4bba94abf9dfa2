#!/usr/bin/env bash
# Federation with a real ejabberd (Debian's package) on loopback, both ways, in two rounds:
#   external  certificates from a throwaway CA both servers trust: SASL EXTERNAL (XEP-0178)
#             in both directions, dialback off on both sides;
#   dialback  self-signed certificates neither trusts: Server Dialback (XEP-0220) in both
#             directions.
# openspimed serves openspimed.example on 127.0.0.2, ejabberd serves ejabberd.example on
# 127.0.0.1; slixmpp clients on each side exchange a message each way, and openspimed's
# metrics must show the expected method for incoming and outgoing links. Not part of CI's
# default run: it installs packages (apt, pip), needs root, and adds an /etc/hosts line
# (removed again on exit). openspimed finds ejabberd.example through [s2s.remote]; ejabberd
# looks up SRV records with its own resolver, here a dnsmasq on 127.0.0.3 that serves
# openspimed.example's, and their targets' addresses with the system's (/etc/hosts).
#
#   sudo tests/s2s-ejabberd.sh            # both rounds
#   sudo tests/s2s-ejabberd.sh dialback   # one round
#   sudo OPENSPIMED_BIN=/path/to/openspimed tests/s2s-ejabberd.sh   # another build
#
# Prints "PASS <round>" per round and exits 0 when every message arrived.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/openspimed-ejabberd.XXXXXX)
chmod 755 "$WORK"
PIDS=()
HOSTS_MARK="# openspimed s2s-ejabberd test"
ROUNDS=(external dialback)
[ $# -gt 0 ] && ROUNDS=("$@")

# ejabberd with its own configuration, spool and node name (not the system instance's),
# run as the ejabberd user.
EJ=(ejabberdctl --config-dir "$WORK/ej" --ctl-config "$WORK/ej/ejabberdctl.cfg"
    --config "$WORK/ej/ejabberd.yml" --spool "$WORK/ej/db" --logs "$WORK/ej/log"
    --node ejs2s@localhost)
ej() { runuser -u ejabberd -- "${EJ[@]}" "$@"; }

stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
    if [ -d "$WORK/ej" ]; then ej stop >/dev/null 2>&1 || true; fi
    pkill -u ejabberd -f "beam.*$WORK" 2>/dev/null || true
}

cleanup() {
    stop_all
    sed -i "/$HOSTS_MARK/d" /etc/hosts || true
    [ -n "${KEEP:-}" ] && { echo "kept $WORK"; return; }
    rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v ejabberdctl >/dev/null || need+=(ejabberd)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
python3 -c 'import slixmpp' 2>/dev/null || pip install -q slixmpp
# OPENSPIMED_BIN runs another build (an older one, to see a fix make the difference).
BIN=${OPENSPIMED_BIN:-$ROOT/target/release/openspimed}
[ -n "${OPENSPIMED_BIN:-}" ] || (cd "$ROOT" && cargo build -q --release -p openspimed)
# ejabberd's DNS: the _xmpp-server SRV record of openspimed.example says 5269, and it has
# no _xmpps-server record (NXDOMAIN: ejabberd gives up on a domain whose SRV target is ".").
dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=127.0.0.3 \
    --bind-interfaces --port=53 --local=/openspimed.example/ \
    --srv-host=_xmpp-server._tcp.openspimed.example,openspimed.example,5269 \
    --log-queries --log-facility="$WORK/dns.log" &
PIDS_DNS=$!
trap 'kill $PIDS_DNS 2>/dev/null || true; cleanup' EXIT
printf '127.0.0.2 openspimed.example %s\n' "$HOSTS_MARK" >> /etc/hosts

wait_port() {
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on $1:$2"; return 1
}

# certs ROUND: one certificate per domain (with the usual subdomain wildcard), from a
# shared CA (external) or each self-signed (dialback).
certs() {
    local d
    if [ "$1" = external ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=s2s test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
    fi
    for d in openspimed.example ejabberd.example; do
        printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$d" "$d" > "$d.ext"
        if [ "$1" = external ]; then
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$d" -keyout "$d.key" -out "$d.csr" 2>/dev/null
            openssl x509 -req -in "$d.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$d.ext" -out "$d.crt" 2>/dev/null
        else
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$d" \
                -addext "subjectAltName=DNS:$d,DNS:*.$d" -keyout "$d.key" -out "$d.crt" 2>/dev/null
        fi
    done
    # Neither side trusts the other's self-signed certificate: an unrelated CA.
    if [ "$1" = dialback ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=nobody's CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
    fi
}

round() {
    local name=$1 dir="$WORK/$1"
    mkdir -p "$dir" && cd "$dir"
    certs "$name"

    # ejabberd on 127.0.0.1 (c2s 5222, s2s 5269).
    mkdir -p "$WORK/ej/db" "$WORK/ej/log"
    cat ejabberd.example.crt ejabberd.example.key > "$WORK/ej/ejabberd.example.pem"
    cp ca.pem "$WORK/ej/ca.pem"
    touch "$WORK/ej/ejabberdctl.cfg"
    printf 'nameserver 127.0.0.3\n' > "$WORK/ej/resolv.conf"
    printf '{lookup, [file, dns]}.\n{resolv_conf, "%s"}.\n' "$WORK/ej/resolv.conf" > "$WORK/ej/inetrc"
    local dialback_module="" use_starttls=required
    [ "$name" = dialback ] && dialback_module="  mod_s2s_dialback: {}"
    cat > "$WORK/ej/ejabberd.yml" <<EOF
loglevel: info
hosts:
  - "ejabberd.example"
certfiles:
  - "$WORK/ej/ejabberd.example.pem"
ca_file: "$WORK/ej/ca.pem"
s2s_use_starttls: $use_starttls
listen:
  -
    port: 5222
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: 5269
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  s2s:
    allow: all
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
$dialback_module
EOF
    chown -R ejabberd:ejabberd "$WORK/ej"
    ej start
    wait_port 127.0.0.1 5222
    wait_port 127.0.0.1 5269
    for _ in $(seq 100); do ej status >/dev/null 2>&1 && break; sleep 0.2; done
    ej register peter ejabberd.example pw >/dev/null

    # openspimed on 127.0.0.2 (c2s 5222, s2s 5269), metrics on 127.0.0.2:5280.
    local dialback=false
    [ "$name" = dialback ] && dialback=true
    cat > openspimed.toml <<EOF
data_dir = "$dir/data"
[metrics]
listen = "127.0.0.2:5280"
[listeners]
c2s = ["127.0.0.2:5222"]
c2s_direct_tls = []
s2s = ["127.0.0.2:5269"]
s2s_direct_tls = []
[s2s]
ca_files = ["ca.pem"]
dialback = $dialback
[s2s.remote."ejabberd.example"]
addresses = ["127.0.0.1:5269"]
[hosts."openspimed.example"]
certificate = "openspimed.example.crt"
key = "openspimed.example.key"
modules = ["disco", "ping", "version"]
EOF
    "$BIN" --config openspimed.toml adduser olga@openspimed.example --password pw
    "$BIN" --config openspimed.toml run > openspimed.log 2>&1 &
    PIDS+=($!)
    wait_port 127.0.0.2 5222
    wait_port 127.0.0.2 5269

    if ! python3 "$ROOT/tests/s2s-clients.py" ejabberd; then
        echo "FAIL $name; last lines of the logs:"
        tail -n 40 openspimed.log "$WORK/ej/log/ejabberd.log" || true
        exit 1
    fi
    local want=sasl_external
    [ "$name" = dialback ] && want=dialback
    local metrics
    metrics=$(curl -s http://127.0.0.2:5280/metrics | grep '^openspimed_s2s_authentications_total')
    for dir_ in in out; do
        if ! grep -q "direction=\"$dir_\",method=\"$want\",result=\"success\"" <<<"$metrics"; then
            echo "FAIL $name: no $dir_ link authenticated by $want:"
            echo "$metrics"
            exit 1
        fi
    done
    echo "PASS $name (openspimed: in and out by $want)"
    cd "$WORK"
    stop_all
    rm -rf "$WORK/ej"
}


for r in "${ROUNDS[@]}"; do
    case "$r" in
        external|dialback) round "$r" ;;
        *) echo "unknown round $r (external or dialback)"; exit 2 ;;
    esac
done

#!/usr/bin/env bash
# Federation with a real Prosody (Debian's package) on loopback: openspimed serves
# openspimed.example on 127.0.0.2, Prosody serves prosody.example on 127.0.0.1, both with
# certificates from a throwaway CA they both trust; slixmpp clients on each side exchange
# messages both ways. Not part of CI's default run: it installs packages (apt, pip), adds
# two /etc/hosts lines (removed again on exit; Prosody finds openspimed.example through
# them, openspimed finds prosody.example through [s2s.remote]) and needs root.
#
#   sudo tests/s2s-prosody.sh
#
# Prints "PASS" and exits 0 when both messages arrived.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/openspimed-prosody.XXXXXX)
chmod 755 "$WORK"
PIDS=()
HOSTS_MARK="# openspimed s2s-prosody test"

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sed -i "/$HOSTS_MARK/d" /etc/hosts || true
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v prosody >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody; }
python3 -c 'import slixmpp' 2>/dev/null || pip install -q slixmpp

# A CA and one serverAuth certificate per domain (with the usual subdomain wildcard).
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=s2s test CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
for d in openspimed.example prosody.example; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$d" -keyout "$d.key" -out "$d.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth\n' "$d" "$d" > "$d.ext"
    openssl x509 -req -in "$d.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$d.ext" -out "$d.crt" 2>/dev/null
done
printf '127.0.0.2 openspimed.example %s\n127.0.0.1 prosody.example %s\n' "$HOSTS_MARK" "$HOSTS_MARK" >> /etc/hosts

# Prosody, on 127.0.0.1 (c2s 5222, s2s 5269), trusting the test CA.
mkdir -p prosody/data
cp prosody.example.crt prosody.example.key ca.pem prosody/
chown -R prosody:prosody prosody
cat > prosody/prosody.cfg.lua <<EOF
pidfile = "$WORK/prosody/prosody.pid"
data_path = "$WORK/prosody/data"
log = { debug = "$WORK/prosody/prosody.log" }
daemonize = false
interfaces = { "127.0.0.1" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_direct_tls_ports = {}
s2s_direct_tls_ports = {}
modules_enabled = { "disco", "ping", "saslauth", "tls", "dialback", "roster", "presence", "message" }
authentication = "internal_hashed"
s2s_secure_auth = true
ssl = { cafile = "$WORK/prosody/ca.pem" }
-- Prosody's resolver (libunbound) reads /etc/hosts only when told to.
unbound = { hoststxt = "/etc/hosts" }
VirtualHost "prosody.example"
    ssl = { certificate = "$WORK/prosody/prosody.example.crt", key = "$WORK/prosody/prosody.example.key", cafile = "$WORK/prosody/ca.pem" }
EOF
prosodyctl --config "$WORK/prosody/prosody.cfg.lua" register peter prosody.example pw
runuser -u prosody -- prosody --config "$WORK/prosody/prosody.cfg.lua" &
PIDS+=($!)

# openspimed, on 127.0.0.2 (c2s 5222, s2s 5269).
cat > openspimed.toml <<EOF
data_dir = "$WORK/data"
[metrics]
enabled = false
[listeners]
c2s = ["127.0.0.2:5222"]
c2s_direct_tls = []
s2s = ["127.0.0.2:5269"]
s2s_direct_tls = []
[s2s]
ca_files = ["ca.pem"]
dialback = false
[s2s.remote."prosody.example"]
addresses = ["127.0.0.1:5269"]
[hosts."openspimed.example"]
certificate = "openspimed.example.crt"
key = "openspimed.example.key"
modules = ["disco", "ping", "version"]
EOF
(cd "$ROOT" && cargo build -q --release -p openspimed)
BIN="$ROOT/target/release/openspimed"
"$BIN" --config openspimed.toml adduser olga@openspimed.example --password pw
"$BIN" --config openspimed.toml run > openspimed.log 2>&1 &
PIDS+=($!)

# Both listening?
for addr in 127.0.0.1/5269 127.0.0.2/5269 127.0.0.1/5222 127.0.0.2/5222; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/${addr%/*}/${addr#*/}") 2>/dev/null && break; sleep 0.1; done
done

if python3 "$ROOT/tests/s2s-clients.py" prosody "$WORK/ca.pem"; then
    echo PASS
else
    echo "FAIL; last lines of the logs:"
    tail -n 30 openspimed.log prosody/prosody.log
    exit 1
fi

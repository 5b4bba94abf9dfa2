#!/usr/bin/env bash
# openspimed, Prosody and ejabberd side by side on this machine, with the same client
# (openspimed-bench) and the same scenarios: login, idle and messages (saturation and a
# fixed 4,000 messages/s). Each server runs on loopback with TLS (STARTTLS required),
# SCRAM-SHA-1 (the strongest mechanism all three offer without channel binding), in-band
# registration for the accounts, and no rate limiting. Installs Debian's prosody and
# ejabberd if missing (needs root), stops what it started, prints one table.
#
#   sudo tests/bench/compare.sh    # env: SESSIONS=200 IDLE=2000 LOGINS=1000 RUN_SECONDS=10 RATE=4000 IDLE_FIRST=1
#
# Not part of CI: it takes a few minutes and installs packages.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SESSIONS=${SESSIONS:-200}
IDLE=${IDLE:-2000}
LOGINS=${LOGINS:-1000}
RUN_SECONDS=${RUN_SECONDS:-10}
RATE=${RATE:-4000}
DOMAIN=bench.example
WORK=$(mktemp -d /tmp/openspimed-compare.XXXXXX)
chmod 755 "$WORK"
PIDS=()

# ejabberd with its own configuration, spool and node name (not the system instance's).
EJ=(ejabberdctl --config-dir "$WORK/ejabberd" --ctl-config "$WORK/ejabberd/ejabberdctl.cfg"
    --config "$WORK/ejabberd/ejabberd.yml" --spool "$WORK/ejabberd/db" --logs "$WORK/ejabberd/log"
    --node ejbench@localhost)

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "${EJ[@]}" stop >/dev/null 2>&1 || true
    pkill -u ejabberd -f "beam.*$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Thousands of sessions per server: more descriptors than the usual 1024.
ulimit -n "$(ulimit -Hn)"

need=()
command -v prosody >/dev/null || need+=(prosody)
command -v ejabberdctl >/dev/null || need+=(ejabberd)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
(cd "$ROOT" && cargo build -q --release -p openspimed -p openspimed-tests)
BENCH="$ROOT/target/release/openspimed-bench"

# One certificate for bench.example, from a throwaway CA every client trusts.
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$DOMAIN" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$DOMAIN" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.crt 2>/dev/null
cat server.crt server.key > server.pem
chmod 644 server.key server.pem

wait_port() {
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on $1" >&2; return 1
}

# run NAME PID PORT: the three scenarios against one server, JSON kept as NAME-*.json.
run() {
    local name=$1 pid=$2 port=$3
    local common=(--target "127.0.0.1:$port" --domain "$DOMAIN" --pid "$pid" --ca "$WORK/ca.pem" --register)
    mkdir -p "$WORK/out" && cd "$WORK/out"
    echo "== $name"
    # Idle sessions are measured first, on the fresh server: measured after the other
    # scenarios, the RSS growth only shows what the freed memory of those runs could not
    # hold (openspimed once read 0.8 KiB per session that way). IDLE_FIRST=0 puts it last.
    if [ "${IDLE_FIRST:-1}" = 1 ]; then
        "$BENCH" idle --sessions "$IDLE" "${common[@]}" && mv bench-idle.json "$name-idle.json"
    fi
    "$BENCH" login --count "$LOGINS" --concurrency 32 "${common[@]}" && mv bench-login.json "$name-login.json"
    "$BENCH" messages --sessions "$SESSIONS" --seconds "$RUN_SECONDS" "${common[@]}" && mv bench-messages.json "$name-messages.json"
    "$BENCH" messages --sessions "$SESSIONS" --seconds "$RUN_SECONDS" --rate "$RATE" --echo "${common[@]}" && mv bench-messages.json "$name-rate.json"
    if [ "${IDLE_FIRST:-1}" != 1 ]; then
        "$BENCH" idle --sessions "$IDLE" "${common[@]}" && mv bench-idle.json "$name-idle.json"
    fi
    cd "$WORK"
}

# --- openspimed on 127.0.0.1:15222
mkdir -p openspimed
cat > openspimed/openspimed.toml <<EOF
data_dir = "$WORK/openspimed/data"
[log]
level = "warn"
[metrics]
enabled = false
[listeners]
c2s = ["127.0.0.1:15222"]
c2s_direct_tls = []
[limits]
max_connections = 1000000
[auth]
max_failures = 1000000
registrations_per_ip_per_hour = 0
[hosts."$DOMAIN"]
certificate = "$WORK/server.crt"
key = "$WORK/server.key"
modules = ["disco", "ping", "version"]
sasl_mechanisms = ["SCRAM-SHA-1"]
allow_registration = true
EOF
"$ROOT/target/release/openspimed" --config openspimed/openspimed.toml run > openspimed/log 2>&1 &
OPID=$!
PIDS+=("$OPID")
wait_port 15222
run openspimed "$OPID" 15222
kill "$OPID"; wait "$OPID" 2>/dev/null || true

# --- Prosody on 127.0.0.1:25222
mkdir -p prosody/data
cp server.crt server.key prosody/
chown -R prosody:prosody prosody
cat > prosody/prosody.cfg.lua <<EOF
pidfile = "$WORK/prosody/prosody.pid"
data_path = "$WORK/prosody/data"
log = { warn = "$WORK/prosody/log" }
daemonize = false
interfaces = { "127.0.0.1" }
c2s_ports = { 25222 }
s2s_ports = {}
c2s_direct_tls_ports = {}
modules_enabled = { "disco", "ping", "saslauth", "tls", "roster", "register", "presence", "message" }
modules_disabled = { "s2s", "limits", "offline" }
authentication = "internal_hashed"
c2s_require_encryption = true
allow_registration = true
min_seconds_between_registrations = 0
registration_throttle_max = 1000000
VirtualHost "$DOMAIN"
    ssl = { certificate = "$WORK/prosody/server.crt", key = "$WORK/prosody/server.key" }
EOF
# runuser's PAM session may lower the descriptor limit again; raise it inside.
runuser -u prosody -- sh -c "ulimit -n $(ulimit -Hn); exec prosody --config '$WORK/prosody/prosody.cfg.lua'" &
PPID_=$!
PIDS+=("$PPID_")
wait_port 25222
PROSODY_PID=$(pgrep -u prosody -f "lua.*prosody --config" | head -1)
run prosody "$PROSODY_PID" 25222
kill "$PROSODY_PID" 2>/dev/null || true

# --- ejabberd on 127.0.0.1:35222
mkdir -p ejabberd/db ejabberd/log
cp server.pem ejabberd/
touch ejabberd/ejabberdctl.cfg
cp /etc/ejabberd/inetrc ejabberd/ 2>/dev/null || true
cat > ejabberd/ejabberd.yml <<EOF
loglevel: warning
hosts:
  - "$DOMAIN"
certfiles:
  - "$WORK/ejabberd/server.pem"
listen:
  -
    port: 35222
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls_required: true
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms: ["digest-md5", "x-oauth2"]
max_fsm_queue: 100000
acl:
  local:
    user_regexp: ""
access_rules:
  register:
    allow: all
shaper_rules:
  max_user_sessions: infinity
  c2s_shaper: none
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_register:
    ip_access: all
    access: register
registration_timeout: infinity
EOF
chown -R ejabberd:ejabberd ejabberd
# Started as the ejabberd user directly, so the raised descriptor limit reaches the VM.
runuser -u ejabberd -- sh -c "ulimit -n $(ulimit -Hn); exec ${EJ[*]} start"
wait_port 35222
"${EJ[@]}" started >/dev/null 2>&1 || true
EJ_PID=$(pgrep -u ejabberd -f "beam.*$WORK" | head -1)
run ejabberd "$EJ_PID" 35222
"${EJ[@]}" stop >/dev/null 2>&1 || true

# --- The table.
python3 - "$WORK/out" <<'EOF'
import json, sys, os
d = sys.argv[1]
def get(name, scen, key):
    try:
        return float(json.load(open(os.path.join(d, f"{name}-{scen}.json")))[key])
    except Exception:
        return float("nan")
servers = ["openspimed", "prosody", "ejabberd"]
rows = [
    ("logins/s", "login", lambda n: get(n, "login", "logins_per_second"), True),
    ("login p99 (ms)", "login", lambda n: get(n, "login", "latency_p99_ms"), False),
    ("delivered msg/s at saturation", "messages", lambda n: get(n, "messages", "delivered_per_second"), True),
    ("msgs per server CPU-second", "messages",
     lambda n: get(n, "messages", "delivered") / max(get(n, "messages", "server_cpu_seconds"), 1e-9), True),
    ("round trip p50 at fixed rate (ms)", "rate", lambda n: get(n, "rate", "latency_p50_ms"), False),
    ("round trip p99 at fixed rate (ms)", "rate", lambda n: get(n, "rate", "latency_p99_ms"), False),
    ("round trip p99.9 at fixed rate (ms)", "rate", lambda n: get(n, "rate", "latency_p999_ms"), False),
    ("KiB per idle TLS session", "idle", lambda n: get(n, "idle", "bytes_per_session") / 1024, False),
]
print()
print(f"{'':34}" + "".join(f"{s:>14}" for s in servers) + f"{'vs best peer':>16}")
for label, _, f, higher_better in rows:
    v = [f(s) for s in servers]
    peers = [x for x in v[1:] if x == x]
    best = (max(peers) if higher_better else min(peers)) if peers else float("nan")
    ratio = (v[0] / best if higher_better else best / v[0]) if best == best and v[0] else float("nan")
    print(f"{label:34}" + "".join(f"{x:>14.1f}" for x in v) + f"{ratio:>15.2f}x")
print("\n(ratio > 1: openspimed better; latency and memory ratios are peer/openspimed)")
EOF

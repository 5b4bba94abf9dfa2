#!/usr/bin/env bash
# slixmpp's plugins for the IM features (XEP-0313 archives, XEP-0280 carbons, XEP-0045
# rooms) against a release openspimed on 127.0.0.1, on its embedded modules; the clients
# are tests/slixmpp-im.py. Not part of CI's default run: it installs slixmpp with pip when
# missing.
#
#   tests/slixmpp-interop.sh
#
# Prints "PASS" and exits 0 when every check held.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/openspimed-slixmpp.XXXXXX)
PORT=${PORT:-15322}
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 -c 'import slixmpp' 2>/dev/null || pip install -q slixmpp
(cd "$ROOT" && cargo build -q --release -p openspimed)
BIN="$ROOT/target/release/openspimed"
cat > "$WORK/openspimed.toml" <<TOML
data_dir = "$WORK/data"
[metrics]
enabled = false
[listeners]
c2s = ["127.0.0.1:$PORT"]
c2s_direct_tls = []
[hosts.localhost]
TOML
for u in alice bob; do "$BIN" --config "$WORK/openspimed.toml" adduser "$u@localhost" --password pw; done
"$BIN" --config "$WORK/openspimed.toml" run > "$WORK/openspimed.log" 2>&1 &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

if python3 "$ROOT/tests/slixmpp-im.py" "$PORT"; then
    echo PASS
else
    echo "FAIL; last lines of the server's log:"
    tail -n 30 "$WORK/openspimed.log"
    exit 1
fi

#!/usr/bin/env bash
# Checks the deploy/ files with the tools operators use (not part of CI's default run):
#   - the systemd unit with systemd-analyze verify (paths pointed at this build),
#   - the Prometheus scrape configuration and alert rules with promtool,
#   - a live /metrics scrape with promtool check metrics (naming and format lint).
# Installs Debian's prometheus package (for promtool) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }
cargo build -q -p openspimed
bin="$PWD/target/debug/openspimed"
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

sed "s#/usr/local/bin/openspimed#$bin#g" deploy/systemd/openspimed.service > "$work/openspimed.service"
systemd-analyze verify "$work/openspimed.service"
echo "systemd unit: OK"

promtool check config deploy/prometheus/scrape.yml
promtool check rules deploy/prometheus/alerts.yml

cat > "$work/c.toml" <<TOML
data_dir = "$work/data"
[metrics]
listen = "127.0.0.1:0"
[listeners]
c2s = ["127.0.0.1:0"]
c2s_direct_tls = []
[hosts.localhost]
TOML
"$bin" --config "$work/c.toml" run 2> "$work/log" &
pid=$!
for _ in $(seq 1 100); do grep -q 'kind="metrics"' "$work/log" && break; sleep 0.1; done
addr=$(grep 'kind="metrics"' "$work/log" | grep -o 'addr=[0-9.:]*' | cut -d= -f2)
curl -fsS "http://$addr/metrics" | promtool check metrics
echo "metrics: OK"

#!/usr/bin/env bash
# Two openspimed builds side by side under the same load generator, alternating, so that
# the machine's drift falls on both alike. Prints one JSON line per run and the medians.
#
#   tests/bench/alternate.sh OLD_BINARY NEW_BINARY PAIRS SCENARIO [ARGS…]
#   tests/bench/alternate.sh /tmp/old/target/release/openspimed target/release/openspimed \
#       6 messages --sessions 200 --seconds 10
#
# Build the old one from another worktree (git worktree add /tmp/old REV; cd /tmp/old;
# cargo build --release -p openspimed); the load generator is this checkout's
# (cargo build --release -p openspimed -p openspimed-tests). The generator writes the
# accounts into the database before it starts the server: when the old server cannot read
# the new schema, set OLD_BENCH to the old worktree's openspimed-bench (build it there with
# -p openspimed-tests) and check that tests/src/bin/openspimed-bench.rs is the same in both.
#
# OLD_EXTRA and NEW_EXTRA are extra generator arguments for each side: one binary with a
# module and without it (OLD_EXTRA="--disable mam", both binaries the same) measures what
# the module costs.
#
# PIN=1 puts the server on CPU 0 and the load generator on CPU 1 (taskset): on the 2-core
# VM, unpinned runs of one binary spread by ±15%; pinned they compare within a few percent
# of each other when alternated over eight pairs.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,10p' "$0"; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OLD=$(realpath "$1"); NEW=$(realpath "$2"); PAIRS=$3; shift 3
BENCH="$ROOT/target/release/openspimed-bench"
OLD_BENCH=$(realpath "${OLD_BENCH:-$BENCH}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
for _ in $(seq "$PAIRS"); do
    for which in old new; do
        bin=$OLD; bench=$OLD_BENCH; extra=${OLD_EXTRA:-}
        [ "$which" = new ] && { bin=$NEW; bench=$BENCH; extra=${NEW_EXTRA:-}; }
        if [ "${PIN:-0}" = 1 ]; then
            printf '#!/bin/sh\nexec taskset -c 0 %s "$@"\n' "$bin" > "$WORK/server"
            chmod +x "$WORK/server"
            # shellcheck disable=SC2086 # the extra arguments are words
            OPENSPIMED_BIN="$WORK/server" taskset -c 1 "$bench" "$@" $extra > /dev/null 2>&1
        else
            # shellcheck disable=SC2086
            OPENSPIMED_BIN=$bin "$bench" "$@" $extra > /dev/null 2>&1
        fi
        printf '%s %s\n' "$which" "$(cat "$(ls -t bench-*.json | head -1)")" | tee -a runs.txt
    done
done
python3 - runs.txt <<'PY'
import json, statistics as st, sys
runs = [(l.split(" ", 1)[0], json.loads(l.split(" ", 1)[1])) for l in open(sys.argv[1])]
rate = next(k for k in runs[0][1] if k.endswith("per_second"))
def per_cpu(d):
    return d["delivered"] / d["server_cpu_seconds"] if "server_cpu_seconds" in d else None
for which in ("old", "new"):
    r = [d for w, d in runs if w == which]
    line = f"{which}: {rate} median {st.median(d[rate] for d in r):.0f} (range {min(d[rate] for d in r)}–{max(d[rate] for d in r)})"
    if per_cpu(r[0]) is not None:
        line += f", per server CPU-second median {st.median(per_cpu(d) for d in r):.0f}"
    print(line)
old = [d for w, d in runs if w == "old"]; new = [d for w, d in runs if w == "new"]
print(f"new/old, median of the pairs: {st.median(n[rate] / o[rate] for o, n in zip(old, new)):.3f}")
PY

#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each (not part of CI's default run).
#   tests/fuzz.sh [SECONDS_PER_TARGET]        (default 60)
# Needs cargo-fuzz (installed here if missing). The machine has a stable toolchain only, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p tests/fuzz/corpus/container
# Seed the container corpus with the stanzas of the test vectors.
python3 - <<'PY'
import json, pathlib
v = json.load(open("modules/openspime/tests/data/openspime-0.9.json"))
out = pathlib.Path("tests/fuzz/corpus/container")
for name, s in v["stanzas"].items():
    if isinstance(s, str) and s.startswith("<"):
        (out / name).write_text(s)
PY
for target in container decrypt stream; do
  echo "== fuzzing $target for ${secs}s"
  cargo fuzz run --fuzz-dir tests/fuzz "$target" -- -max_total_time="$secs" -max_len=8192
done
echo "fuzzing finished without a crash"

#!/usr/bin/env bash
# The long runs CI cannot afford on every change (run them nightly, or before a release), as root:
#   - the agent's API fuzzed with many more examples per operation than CI's 15;
#   - the 1,000-cycle CPU soak (bench/soak.py), its figures written to OUT_DIR.
#
#   sudo scripts/nightly.sh [OUT_DIR]        default OUT_DIR: bench/results/nightly-<date>
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
out=${1:-bench/results/nightly-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
echo "==> API fuzzing (${THAW_FUZZ_EXAMPLES:=500} examples per operation and mode)"
THAW_FUZZ_EXAMPLES=$THAW_FUZZ_EXAMPLES .venv/bin/pytest -q tests/agent/test_api_fuzz.py
echo "==> soak, 1,000 cycles (figures: $out/soak-1000.json)"
.venv/bin/python bench/soak.py "$out/soak-1000.json" --cycles 1000 --check-every 50

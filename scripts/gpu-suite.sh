#!/usr/bin/env bash
# thaw's GPU test suite and GPU benchmarks, in one command, on a GPU machine (driver >= 580).
# Writes results under $OUT (default ./gpu-results): results.json + results.md (date, GPU, driver,
# kernel, every benchmark) and the logs, to be committed under bench/results/.
#
#   scripts/gpu-suite.sh [STAGE...]     STAGE: tests | bench | report (default: tests bench report)
#
# Works on a machine where nothing can be installed: Python packages missing there are taken from
# wheels in .whl/ (if present), and CRIU from a portable tree in .criu/ (scripts/install-criu.sh .criu,
# built where Debian's archive is reachable) unless the host has CRIU >= 4.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
stages=${*:-tests bench report}
PY=${PYTHON:-python3}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/thaw-site .whl/*.whl \
    || { echo "cannot install the carried wheels" >&2; exit 1; }
  export PYTHONPATH=/tmp/thaw-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
if [ -d .criu ] && [ -z "${THAW_CRIU:-}" ]; then export THAW_CRIU=$PWD/.criu; fi
"$PY" -c 'from thaw.criu import find_criu; c = find_criu(); print("CRIU", c.version, "from", c.source)' \
  || { echo "no CRIU >= 4: build a portable tree with scripts/install-criu.sh .criu and carry it" >&2; exit 1; }

"$PY" - "$OUT/system.json" <<'PYEOF'
import json, os, platform, subprocess, sys, datetime
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:
        return f"unavailable: {exc}"
info = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "kernel": platform.release(),
    "gpus": sh("nvidia-smi", "--query-gpu=index,name,uuid,memory.total,driver_version", "--format=csv,noheader"),
    "cpu_count": os.cpu_count(),
    "python": sys.version.split()[0],
}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda_runtime"] = torch.version.cuda
except Exception as exc:
    info["torch"] = f"unavailable: {exc}"
from thaw.cuda import driver_version
info["driver"] = driver_version()
from thaw.criu import find_criu
info["criu"] = find_criu().version
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PYEOF

rc=0
for stage in $stages; do
  case $stage in
    tests)
      echo "=== GPU tests ==="
      # GPU_TESTS narrows the run (pytest paths and options), e.g. GPU_TESTS="tests/gpu -k twin"
      "$PY" -m pytest -m gpu ${GPU_TESTS:-tests} -v -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
      [ "${PIPESTATUS[0]}" = 0 ] || rc=1 ;;
    bench)
      echo "=== GPU benchmarks ==="
      for b in ${BENCHES:-memory engine pipeline}; do
        case $b in
          memory) "$PY" bench/memory_bench.py "$OUT/bench_memory.json" ;;
          # PIPELINE_ARGS: thaw bench's options for it, e.g. "--cold 3 --restores 10 --drop-caches --pretouch 40"
          pipeline) "$PY" bench/gpu_pipeline.py "$OUT/bench_pipeline.json" ${PIPELINE_ARGS:-} ;;
          engine) "$PY" bench/engine_bench.py "$OUT/bench_engine.json" ;;
          *) echo "unknown benchmark $b" >&2; false ;;
        esac 2>&1 | tee -a "$OUT/bench.log"
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
      done ;;
    report)
      "$PY" bench/report.py "$OUT" || rc=1 ;;
    *) echo "unknown stage $stage (tests | bench | report)" >&2; exit 2 ;;
  esac
done
exit $rc

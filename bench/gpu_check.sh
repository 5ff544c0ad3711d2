#!/usr/bin/env bash
# One command for a CUDA machine with the project installed: the GPU kernel tests, then the
# kernel benchmark at 8M x 1280 fp16, results under bench/results/. Runs in under 5 minutes.
#
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to pick an interpreter
#
# Exit status: that of the tests (the benchmark's targets are reported, not enforced).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT=bench/results
mkdir -p "$OUT"

if ! "$PY" -c "import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: needs a CUDA device, torch with CUDA, and triton" >&2
    exit 2
fi
# Compiled kernels, not the interpreter, for the whole run.
unset TRITON_INTERPRET REVISION_KERNELS
"$PY" -c "import torch, triton; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| triton', triton.__version__)"

workers=()
if "$PY" -c "import xdist" 2>/dev/null; then workers=(-n 4); fi
echo "== GPU tests (tests/test_kernels_triton.py -m gpu)"
timeout 100 "$PY" -m pytest tests/test_kernels_triton.py -m gpu -q -p no:cacheprovider "${workers[@]}" \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
tests_status=${PIPESTATUS[0]}

echo "== benchmark (bench/bench_kernels.py, 8388608 x 1280 float16)"
timeout 190 "$PY" bench/bench_kernels.py --rows 8388608 --dim 1280 --chunk-rows 1048576 --repeats 5 --sweep \
    2>&1 | tee "$OUT/bench_kernels.log"
bench_status=${PIPESTATUS[0]}

if [ "$bench_status" -eq 0 ]; then
    "$PY" - <<'PYEOF'
import json

doc = json.load(open("bench/results/bench_kernels.json"))
print(f"targets on {doc['device']} (copy {doc['copy_gb_per_s']:.0f} GB/s): >= 0.80 of copy, >= 3x eager")
for name, k in doc["kernels"].items():
    frac, speed = k["fraction_of_copy_bandwidth"], k.get("speedup_vs_eager")
    ok = frac >= 0.8 and (speed is None or speed >= 3.0)
    extra = f", {speed:.1f}x eager" if speed is not None else ""
    print(f"  {name:18s} {frac:5.2f} of copy{extra}  {'MET' if ok else 'MISSED'}")
PYEOF
fi
echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status; results in $OUT/"
exit "$tests_status"

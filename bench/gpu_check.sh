#!/usr/bin/env bash
# The GPU check, one command on a bare, offline CUDA machine (docs/gpu.md). From the repository root,
# with the folder written by `bash bench/gpu_wheels.sh` beside it (bench/gpu-wheels):
#
#   bash bench/gpu_check.sh
#
# 1. installs those wheels into a target folder (.gpu-site) and the project itself, with no index and no
#    build isolation, so the C extension is built by the machine's compiler; checks every requirement
#    is met by the image plus the folder;
# 2. stops here, with exit status 4, when there is no CUDA device (what `make gpu-dryrun` proves);
# 3. runs, each step under its own time limit so a hang in one still returns the others' results:
#    (a) the Triton tests compiled, not interpreted, against their references;
#    (b) the kernel benchmark: fraction of copy bandwidth, speed-up over eager and torch.compile, a sweep;
#    (c) `revision align --device cuda` on a generated 8M x 1280 fp16 store against its I/O floor;
#    (d) `revision train` smoke runs in bf16 with SDPA (1 and 576 visual tokens), samples/s;
#    (e) diagnose's FAISS GPU index, when the optional faiss-gpu-cu12 wheel loads.
# About 7 minutes in all (the limits below add up to 460 s after the install). Everything goes to
# bench/results/gpu/: one log and one JSON per step, and summary.json with each step's status and time.
#
# Environment: PYTHON (default python3), GPU_WHEELS (bench/gpu-wheels), GPU_RESULTS (bench/results/gpu),
# GPU_SITE (.gpu-site), GPU_WORK (scratch for the generated stores, removed at the end; default
# /tmp/revision-gpu-check), GPU_ALIGN_ROWS (8388608).
#
# Exit status:
#   0  every step ran and passed
#   1  a step failed or ran out of time (the others' results are written; summary.json says which)
#   2  cannot start: wheel folder missing or built for another Python, or the image lacks a module
#   3  installing the wheels or the project failed (install.log), or a requirement is still unmet
#   4  no CUDA device: everything installed and imported, nothing measured
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-bench/gpu-wheels}"
RESULTS="${GPU_RESULTS:-bench/results/gpu}"
SITE="${GPU_SITE:-.gpu-site}"
WORK="${GPU_WORK:-/tmp/revision-gpu-check}"
ALIGN_ROWS="${GPU_ALIGN_ROWS:-8388608}"
T0=$SECONDS
case "$SITE" in /*) ;; *) SITE="$PWD/$SITE" ;; esac

say() { echo "gpu_check: $*"; }
fail() {
    say "error: $2" >&2
    exit "$1"
}

[ -f "$WHEELS/manifest.txt" ] || fail 2 "no wheel folder at $WHEELS (run 'bash bench/gpu_wheels.sh' on a machine with an index)"
command -v "$PY" >/dev/null || fail 2 "no Python interpreter '$PY' (set PYTHON)"
want=$(awk '$1 == "python" { print $2 }' "$WHEELS/manifest.txt")
have=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$want" = "$have" ] || fail 2 "$WHEELS holds wheels for Python $want, this interpreter is $have (bench/gpu_wheels.sh --python-version $have)"

mkdir -p "$RESULTS"
rm -f "$RESULTS"/steps.tsv "$RESULTS"/summary.json
# -P: the repository root must not shadow the installed package (its folders are mapped by setup).
RUN=("$PY" -P)
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Compiled kernels, not the interpreter, and no progress bars in the logs.
unset TRITON_INTERPRET REVISION_KERNELS
export REVISION_NO_PROGRESS=1

say "checking the image ($PY $have)"
"${RUN[@]}" bench/gpu_env.py image || fail 2 "the image lacks a module the check expects (above)"

say "installing $(grep -c '^wheel' "$WHEELS/manifest.txt") wheels and the project into $SITE (no index)"
rm -rf "$SITE" "$SITE-faiss"
{
    mapfile -t wheels < <(awk '$1 == "wheel" { print $2 }' "$WHEELS/manifest.txt")
    required=() optional=()
    for w in "${wheels[@]}"; do
        case "$w" in faiss_*) optional+=("$WHEELS/$w") ;; *) required+=("$WHEELS/$w") ;; esac
    done
    "$PY" -m pip install --no-index --no-deps --target "$SITE" "${required[@]}" &&
        "$PY" -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" . &&
        if [ "${#optional[@]}" -gt 0 ]; then
            # Its own folder: a FAISS that cannot load must not hide the CPU one from anything else.
            "$PY" -m pip install --no-index --no-deps --target "$SITE-faiss" "${optional[@]}"
        fi
} >"$RESULTS/install.log" 2>&1 || {
    tail -20 "$RESULTS/install.log" >&2
    fail 3 "install failed (see $RESULTS/install.log)"
}
"${RUN[@]}" bench/gpu_env.py installed --out "$RESULTS/env.json" ||
    fail 3 "a requirement is unmet after installing (above)"
say "installed in $((SECONDS - T0)) s"

"${RUN[@]}" bench/gpu_env.py cuda || {
    rc=$?
    [ "$rc" -eq 4 ] && { say "no CUDA device: installed and importable, stopping before the GPU steps"; exit 4; }
    fail 2 "probing CUDA failed (exit $rc)"
}

# step NAME SECONDS CMD...: runs CMD under `timeout`, log in $RESULTS/NAME.log, a line in steps.tsv.
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    say "== $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    tail -25 "$RESULTS/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$RESULTS/steps.tsv"
    say "$name: exit $rc in $((SECONDS - start)) s"
}
trap 'rm -rf "$WORK"' EXIT

step tests 90 "${RUN[@]}" -m pytest tests/test_kernels_triton.py -m gpu -q -p no:cacheprovider \
    --junitxml="$RESULTS/tests.xml"
step kernels 130 "${RUN[@]}" bench/bench_kernels.py --rows 8388608 --dim 1280 --chunk-rows 1048576 \
    --repeats 5 --sweep --output "$RESULTS/bench_kernels.json"
step align 140 "${RUN[@]}" bench/gpu_align.py --rows "$ALIGN_ROWS" --dim 1280 --work "$WORK" \
    --output "$RESULTS/align.json"
step train 70 "${RUN[@]}" bench/gpu_train.py --work "$WORK/train" --output "$RESULTS/train.json"
PYTHONPATH="$SITE-faiss:$PYTHONPATH" step faiss 30 "${RUN[@]}" bench/gpu_faiss.py --output "$RESULTS/faiss.json"

"${RUN[@]}" bench/gpu_env.py summary --results "$RESULTS" --seconds "$((SECONDS - T0))"

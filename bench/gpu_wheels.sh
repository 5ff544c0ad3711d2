#!/usr/bin/env bash
# Downloads, on a machine with a package index, exactly the wheels that bench/gpu_check.sh installs on
# a lent GPU machine that reaches none. That machine's image already holds Python 3.12 with CUDA torch,
# triton, numpy, pyarrow, psutil, tqdm, matplotlib, fsspec, transformers (hence packaging, pyyaml,
# typing_extensions), peft and setuptools; the project needs zarr (with numcodecs, google-crc32c,
# donfig) on top, and the check runs pytest. Each wheel is pinned and fetched with --no-deps, so
# nothing comes in implicitly: gpu_check.sh verifies after installing that every requirement is met.
#
#   bash bench/gpu_wheels.sh                               # CPython 3.12 (the GPU image) → bench/gpu-wheels
#   bash bench/gpu_wheels.sh --python-version 3.11 DIR     # the interpreter at hand (make gpu-dryrun)
#   bash bench/gpu_wheels.sh --no-optional DIR             # without faiss-gpu-cu12
#
# Exit status: 0 the folder holds the list and fits the limit; 1 over the size limit; 2 bad usage or
# a download failed. DIR/manifest.txt records the Python version, each wheel and the total size.
set -euo pipefail

# Needed by the check. Exact pins: the image's Python is 3.12, and zarr < 3.2 matches pyproject.toml.
REQUIRED=(
    zarr==3.1.6
    numcodecs==0.16.6
    google-crc32c==1.9.0
    donfig==0.8.1.post1
    pytest==9.2.0
    pluggy==1.7.0
    iniconfig==2.3.1
    pygments==2.21.0
)
# Optional: diagnose's FAISS GPU index (48 MB; it needs the image's CUDA 12 runtime and cuBLAS
# libraries, which a CUDA torch build usually brings). It fits the limit, so the check tests it.
OPTIONAL=(faiss-gpu-cu12==1.14.1.post1)
LIMIT_MIB=60

version=3.12
optional=1
dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) version="${2:?--python-version needs a value such as 3.12}"; shift 2 ;;
        --no-optional) optional=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "gpu_wheels: error: unknown flag $1" >&2; exit 2 ;;
        *) [ -z "$dir" ] || { echo "gpu_wheels: error: one DIR only (got $dir and $1)" >&2; exit 2; }; dir="$1"; shift ;;
    esac
done
if ! [[ "$version" =~ ^3\.[0-9]+$ ]]; then
    echo "gpu_wheels: error: --python-version $version: expected 3.N" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
dir="${dir:-bench/gpu-wheels}"
PY="${PYTHON:-python3}"
specs=("${REQUIRED[@]}")
if [ "$optional" -eq 1 ]; then specs+=("${OPTIONAL[@]}"); fi

mkdir -p "$dir"
# The platform tags the wheels carry (numcodecs: manylinux2014 = manylinux_2_17 and manylinux_2_28;
# faiss: manylinux_2_17). pip skips files already in DIR, so a second run costs no download.
if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --dest "$dir" "${specs[@]}"; then
    echo "gpu_wheels: error: pip download failed for Python $version (is a package index reachable?)" >&2
    exit 2
fi

# Keep exactly one wheel per pin: a folder reused across pin changes must not install stale wheels.
keep=()
for spec in "${specs[@]}"; do
    name="${spec%%==*}"
    stem="${name//-/_}-${spec##*==}-"
    found=("$dir"/"$stem"*.whl)
    if [ ! -e "${found[0]}" ] || [ "${#found[@]}" -ne 1 ]; then
        echo "gpu_wheels: error: expected one wheel $stem*.whl in $dir, found ${#found[@]}" >&2
        exit 2
    fi
    keep+=("$(basename "${found[0]}")")
done
for whl in "$dir"/*.whl; do
    base="$(basename "$whl")"
    if ! printf '%s\n' "${keep[@]}" | grep -qxF "$base"; then rm -f "$whl"; fi
done

total=0
{
    echo "python $version"
    for base in "${keep[@]}"; do
        size=$(stat -c %s "$dir/$base")
        total=$((total + size))
        echo "wheel $base $size"
    done
    echo "total $total"
} >"$dir/manifest.txt"
mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu_wheels: ${#keep[@]} wheels for CPython $version in $dir: $mib MiB (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_wheels: error: $mib MiB exceeds the $LIMIT_MIB MiB limit" >&2
    exit 1
fi

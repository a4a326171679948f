#!/usr/bin/env bash
# GPU check of suite's CUDA kernels: build, compare with the references, time against torch.
#
# For a machine with an NVIDIA GPU, the CUDA 13 toolkit (nvcc), PyTorch, pybind11,
# scikit-build-core, cmake and ninja, and no access to PyPI (hence --no-build-isolation). It has
# not been run on the CPU-only development machine, where the CUDA kernels are only compiled.
#
#   bash benchmarks/gpu_check.sh [--skip-probe] [--skip-features] [--n 50000] [--n-files 2048]
#
# Prints the card name and every number; with $OUT set, writes $OUT/gpu_check.json,
# $OUT/gpu_check.log, $OUT/build.log and $OUT/pytest_gpu.log there. Exits non-zero when the
# build fails or a CUDA result disagrees with its reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT:-}"
log() { if [[ -n "$OUT" ]]; then tee -a "$OUT/$1"; else cat; fi; }
[[ -n "$OUT" ]] && mkdir -p "$OUT"

# nvcc is often installed but not on PATH
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin; do
    if [[ -x "$d/nvcc" ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
nvcc --version | tail -2 | log build.log

# Build (editable) with the CUDA kernels required, so a missing nvcc fails here, loudly.
start=$(date +%s)
CMAKE_ARGS="${CMAKE_ARGS:-} -DSUITE_CUDA=ON" \
  "$PY" -m pip install --no-build-isolation --no-deps -e . 2>&1 | log build.log
echo "build seconds: $(( $(date +%s) - start ))" | log build.log

# The gpu-marked tests (CUDA vs reference over many shapes), when pytest is installed.
rc=0
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  "$PY" -m pytest tests/test_kernels.py tests/test_features.py tests/test_decode.py -q -m gpu \
    -p no:cacheprovider 2>&1 | log pytest_gpu.log \
    || rc=1
fi

"$PY" benchmarks/gpu_check.py "$@" 2>&1 | log gpu_check.log || rc=1
exit "$rc"

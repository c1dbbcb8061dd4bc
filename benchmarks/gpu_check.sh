#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one call of the device tool, about 5 minutes):
# build the CUDA extension in place, run the CUDA tests against the float64 oracle, and time the
# ops on the GPU. Everything it prints and writes goes under $OUT (default benchmarks/results/gpu).
#   device run: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
log="$out/gpu_check.log"
py="${PYTHON:-python3}"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "== build"
  DHT_FAST_BUILD_CUDA=1 DHT_FAST_BUILD_CPP=1 "$py" setup.py -q build_ext --inplace \
    --build-temp /tmp/dht_build 2>&1 | tail -20
  "$py" -c "import dht_fast._C_cuda; print('dht_fast._C_cuda imports')"
  echo "== tests on the GPU"
  if "$py" -c "import pytest" 2>/dev/null; then
    # The compiled backends are required: one that failed to build or import fails its tests
    # instead of skipping them (not triton: the CPU tests skip it on CPU tensors here). No -x:
    # one run should show every failing case, not the first.
    DHT_FAST_REQUIRE_BACKENDS=cpp,cuda "$py" -m pytest -q -p no:cacheprovider \
      --benchmark-disable --maxfail=25 -rs tests/test_cuda.py tests/test_triton_linear.py \
      tests/test_performative_solve.py tests/test_sphere_project.py 2>&1 | tail -60
  else
    echo "pytest is not installed here: tests skipped"
  fi
  echo "== timings"
  PYTHONPATH=. "$py" -m dht_fast bench --device cuda --quick --out "$out" 2>&1 | tail -40
} 2>&1 | tee "$log"

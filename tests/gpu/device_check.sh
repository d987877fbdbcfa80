#!/usr/bin/env bash
# The GPU checks for a lent device machine, in one run: what the card is, the
# standalone harness's checks and benchmark (run_harness.py, built for this
# card only), then the checks again under compute-sanitizer's memcheck.
#
#   bash tests/gpu/device_check.sh      # logs in $OUT (or /tmp/gl_device); about 5 minutes
#
# Needs nvcc, python3 with NumPy, and an NVIDIA GPU; not TensorFlow: the
# harness runs the device code of the TensorFlow GPU kernels
# (cc/group_lasso/gpu_apply.cuh) on its own, so this runs on a GPU machine
# where TensorFlow cannot be installed (the GPU machines this project is lent
# have none; docs/benchmarks.md, "GPU kernels"). The TensorFlow kernels
# themselves are compiled and linked by tests/gpu/test_cuda_build.py.
# Exits non-zero if a check fails, memcheck reports an error, or no GPU is seen.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gl_device}
build=/tmp/gl_device_build
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version | tail -n 2
  python3 -c "import numpy, sys; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
} 2>&1 | tee "$out/device.txt"

timeout 300 python3 tests/gpu/run_harness.py --arch native --out "$build" 2>&1 |
  tee "$out/harness.txt"
harness=${PIPESTATUS[0]}
if ! grep -q '^device: ' "$out/harness.txt"; then
  echo "no GPU was seen: the harness was built but nothing ran"
  exit 3
fi

memcheck=skipped
if [ -f "$build/libgl_gpu_harness.so" ] && command -v compute-sanitizer >/dev/null; then
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 tests/gpu/run_harness.py --lib "$build/libgl_gpu_harness.so" --no-benchmark \
    >"$out/memcheck.txt" 2>&1
  memcheck=$?
  tail -n 25 "$out/memcheck.txt"
fi

echo "harness exit status: $harness; memcheck exit status: $memcheck"
[ "$harness" = 0 ] && { [ "$memcheck" = 0 ] || [ "$memcheck" = skipped ]; }

#!/usr/bin/env bash
# The one GPU check, for the day a GPU is at hand (at most 10 minutes):
#   bash bench/gpu_check.sh                        # TensorRT required
#   ALLOW_NO_TENSORRT=1 bash bench/gpu_check.sh    # a GPU machine known to have no TensorRT
# 1. the GPU and TensorRT tests, with STYLECAST_REQUIRE_GPU=1: what is missing fails, nothing skips;
# 2. python -m bench.gpu_check: an fp16 TensorRT plan of the shipped model (built, checked, timed) and
#    torch-CUDA fp16 channels_last for v1 and v2 (eager, as a CUDA graph, through the backend's
#    stylize) at 640x480, 1280x720, 1920x1080, into bench/results/gpu_check.json.
# Exits non-zero, loudly, on a machine without a CUDA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! ls /dev/nvidia0 >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (no /dev/nvidia0, no nvidia-smi)" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

export STYLECAST_REQUIRE_GPU=1
markers="gpu or tensorrt"
if [ -n "${ALLOW_NO_TENSORRT:-}" ]; then
  markers="gpu"   # the TensorRT tests would fail on a machine known to have no TensorRT
fi
# Both steps run whatever the first one gives: device time is scarce, and each failure says what.
status=0
timeout 300 "$PY" -m pytest -q -ra -m "$markers" tests/test_runtime.py tests/test_build.py || status=$?
timeout 300 "$PY" -m bench.gpu_check "$@" || status=$?
exit "$status"

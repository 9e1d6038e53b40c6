#!/usr/bin/env bash
# The device check (issue 21): one command, a few minutes, writes device.md (a Markdown
# section for BENCHMARKS.md) and device.json into $OUT (or bench/out).
#
#   bench/device.sh            # here: builds the artifacts (needs the project installed),
#                              # then measures them on this machine
#   bench/device.sh            # on a lent GPU machine, with .device/ (and .whl/) carried:
#                              # measures only (no TensorFlow needed there)
#
# Artifacts: .device/ (bench/device/prepare.py: LeNet-300-100, the small CNN, MobileNetV2
# 0.35 as Keras, ONNX float32/float16/int8 and TFLite float32/int8). Wheels missing on
# the device (LiteRT, Keras for the JAX training run) travel in .whl/ and are installed
# into /tmp/site, never into the system.
set -euo pipefail
cd "$(dirname "$0")/.."
ART=${DEVICE_ARTIFACTS:-.device}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ ! -f "$ART/manifest.json" ]; then
  if "$PY" -c "import tensorflow" 2>/dev/null; then
    "$PY" -m bench.device.prepare --out "$ART"
  else
    echo "bench/device.sh: no artifacts in $ART and no TensorFlow here to build them; run it once where the project is installed, then carry $ART" >&2
    exit 1
  fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  PY=python3
fi
PYTHONUNBUFFERED=1 "$PY" -m bench.device.check --artifacts "$ART" --out "${OUT:-bench/out}" "$@"

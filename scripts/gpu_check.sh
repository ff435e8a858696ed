#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool, carry [".whl"], after
# scripts/gpu_wheels.sh here): installs the carried wheels, runs the GPU
# tests, then the GPU benchmarks, writing logs and JSON to $OUT (at most 8
# files come back). Each step is time-boxed so the whole run fits one call.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
DATA=${DATA:-shared}  # written by scripts/gpu_wheels.sh
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, spacy, thinc, cupy, spacy_rnn; print(torch.__version__, spacy.__version__, thinc.__version__, cupy.__version__)"
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
} > "$OUT/gpu_tests.log" 2>&1
if [ -d "$DATA/ptb" ]; then
  for mp in "" "--mixed-precision"; do
    timeout 240 python3 benchmarks/lm_throughput.py --data "$DATA/ptb" --seconds 60 \
      --gpu-id 0 $mp > "$OUT/lm_throughput${mp:+_mixed}.json" 2> "$OUT/lm_throughput${mp:+_mixed}.err"
  done
fi
timeout 180 python3 benchmarks/encoder_speed.py --seconds 20 --gpu-id 0 \
  > "$OUT/encoder_speed.json" 2> "$OUT/encoder_speed.err"
tail -3 "$OUT/gpu_tests.log"

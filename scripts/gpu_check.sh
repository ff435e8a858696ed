#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool, carry [".whl"], after
# scripts/gpu_wheels.sh here): installs the carried wheels, runs the GPU
# tests, then every GPU benchmark on the data slices in shared/, writing
# logs and JSON to $OUT (at most 8 files come back). Each step is time-boxed
# so the whole run fits one 10-minute call.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
pip_install /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, spacy, thinc, cupy, datasets, pyarrow, spacy_rnn; print(torch.__version__, spacy.__version__, thinc.__version__, cupy.__version__, datasets.__version__, pyarrow.__version__)"
  timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short tests/test_gpu.py
} > "$OUT/gpu_tests.log" 2>&1
tail -4 "$OUT/gpu_tests.log"
S=${SECONDS_EACH:-30}
for mp in "" "--mixed-precision"; do
  timeout 100 python3 benchmarks/lm_throughput.py --data shared/ptb --seconds "$S" \
    --gpu-id 0 $mp > "$OUT/lm_throughput${mp:+_mixed}.json" 2>> "$OUT/stderr.log"
done
# bow and ensemble too: with CuPy on PyTorch's allocator their GPU peaks are
# measured like the torch models' (README: "CuPy pool, not measured").
timeout 200 python3 benchmarks/textcat_bench.py --corpus-dir shared/amazon --gpu-id 0 \
  --seconds "$((S * 2 / 3))" --models "${TEXTCAT_MODELS:-rnn_bilstm,rnn_gru,torch_bilstm,bow,ensemble}" \
  > "$OUT/textcat_bench.json" 2>> "$OUT/stderr.log"
timeout 60 python3 benchmarks/encoder_speed.py --data shared/amazon/reviews.jsonl \
  --max-reviews 500 --seconds 3 --gpu-id 0 > "$OUT/encoder_speed.json" 2>> "$OUT/stderr.log"
# torch.profiler over rnn_textcat and spaCy's BiLSTM textcat, same batches:
# host time, kernels and GPU busy time per step (at most 8 files come back,
# so this replaces the cProfile run).
timeout 120 python3 benchmarks/profile_textcat.py --torch-profiler --data shared/amazon/reviews.jsonl \
  --max-docs 200 --steps 20 --infer-docs 200 --top 12 --gpu-id 0 \
  --models rnn_bilstm,torch_bilstm > "$OUT/profile_textcat_ops.json" 2>> "$OUT/stderr.log"
timeout 60 python3 benchmarks/profile_lm.py --data shared/ptb --seconds 15 --gpu-id 0 \
  > "$OUT/profile_lm.json" 2>> "$OUT/stderr.log"
grep -v "VisibleDeprecationWarning\|toDlpack" "$OUT/stderr.log" | tail -20

#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool, carry [".whl"]): A/B of the
# working tree's spacy-rnn against a baseline wheel, same machine, same call.
# Here first: `bash scripts/gpu_wheels.sh`, then build the baseline into
# .whl/base/, e.g.
#   git worktree add /tmp/base <rev> && .venv/bin/python -m pip wheel -q \
#     --no-deps --no-build-isolation -w .whl/base /tmp/base
# Steps (each time-boxed; STEPS picks a subset): lm (lm_throughput, base
# then new), ops (profile_lm --torch-profiler, new), mixed (lm_throughput
# float16, new), big (lm_throughput at width 650, new), tests (pytest -m
# gpu, new), textcat (textcat_bench: rnn_bilstm base, then TEXTCAT_MODELS
# new), textcat_ops (profile_textcat --torch-profiler: base, new),
# textcat_ab (textcat_bench, two alternating rounds: rnn_bilstm base, then
# rnn_bilstm and torch_bilstm new), encoder (encoder_speed, new), buckets
# (encoder_speed over bucket costs 0-256 and profile_textcat at 0, 16 and 64,
# new: 4 files), host (profile_lm --host-overhead,
# base then new: nlp.update vs the component vs the plain loop), clip
# (lm_throughput with Thinc's per-tensor clipping, new), nograph
# (lm_throughput with rnn_lm's cuda_graphs off, new), torchgraph
# (lm_throughput with the plain loop replayed as CUDA graphs too, new), plain
# (new, 2 files: textcat_bench of rnn_bilstm, rnn_gru and their plain PyTorch
# counterparts, packed and padded; lm_throughput --cell gru). lm_throughput clips
# rnn_lm by the global norm by default; a baseline older than 432d319 does
# that with a host read per tensor, so LM_ARGS="--rnn-lm-clip per-tensor"
# compares the two trees on the old protocol.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
pip_install /tmp/site .whl/*.whl || exit 1
[ -d .whl/base ] && pip_install /tmp/site_base .whl/base/*.whl
NEW=/tmp/site
BASE=/tmp/site_base:/tmp/site
S=${SECONDS_EACH:-30}
STEPS=${STEPS:-lm host ops big tests textcat}
log() { echo "$(date -u +%H:%M:%S) $*" >> "$OUT/steps.log"; }
for step in $STEPS; do
  log "start $step"
  case $step in
    lm)
      for side in base new; do
        [ $side = base ] && [ ! -d /tmp/site_base ] && continue
        path=$NEW; [ $side = base ] && path=$BASE
        PYTHONPATH=$path timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
          --seconds "$S" --gpu-id 0 ${LM_ARGS:-} > "$OUT/lm_$side.json" 2>> "$OUT/stderr.log"
      done ;;
    host)
      for side in base new; do
        [ $side = base ] && [ ! -d /tmp/site_base ] && continue
        path=$NEW; [ $side = base ] && path=$BASE
        PYTHONPATH=$path timeout 120 python3 benchmarks/profile_lm.py --data shared/ptb \
          --host-overhead --steps 50 --rounds 5 --gpu-id 0 > "$OUT/lm_host_$side.json" 2>> "$OUT/stderr.log"
      done ;;
    nograph)
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds "$S" --gpu-id 0 --rnn-lm-cuda-graphs off > "$OUT/lm_no_graphs.json" 2>> "$OUT/stderr.log" ;;
    torchgraph)
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds "$S" --gpu-id 0 --torch-cuda-graphs > "$OUT/lm_torch_graphs.json" 2>> "$OUT/stderr.log" ;;
    clip)
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds "$S" --gpu-id 0 --rnn-lm-clip per-tensor > "$OUT/lm_per_tensor.json" 2>> "$OUT/stderr.log" ;;
    ops)
      PYTHONPATH=$NEW timeout 90 python3 benchmarks/profile_lm.py --data shared/ptb \
        --torch-profiler --steps 50 --top 25 --gpu-id 0 > "$OUT/lm_ops.json" 2>> "$OUT/stderr.log" ;;
    mixed)
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds "$S" --gpu-id 0 --mixed-precision > "$OUT/lm_mixed.json" 2>> "$OUT/stderr.log" ;;
    big)
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds 20 --width 650 --gpu-id 0 > "$OUT/lm_650.json" 2>> "$OUT/stderr.log" ;;
    tests)
      PYTHONPATH=$NEW timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short \
        tests/test_gpu.py > "$OUT/gpu_tests.log" 2>&1 ;;
    textcat)
      if [ -d /tmp/site_base ]; then
        PYTHONPATH=$BASE timeout 60 python3 benchmarks/textcat_bench.py --corpus-dir shared/amazon \
          --gpu-id 0 --seconds "${TEXTCAT_SECONDS:-20}" --models rnn_bilstm \
          > "$OUT/textcat_bench_base.json" 2>> "$OUT/stderr.log"
      fi
      PYTHONPATH=$NEW timeout 240 python3 benchmarks/textcat_bench.py --corpus-dir shared/amazon \
        --gpu-id 0 --seconds "${TEXTCAT_SECONDS:-20}" --models "${TEXTCAT_MODELS:-rnn_bilstm,torch_bilstm}" \
        > "$OUT/textcat_bench.json" 2>> "$OUT/stderr.log" ;;
    textcat_ops)
      # torch.profiler over the same batches: the base tree's rnn_textcat,
      # then the new one and spaCy's BiLSTM.
      ARGS="--torch-profiler --data shared/amazon/reviews.jsonl --max-docs 200 --steps 20 --infer-docs 200 --top 12 --gpu-id 0"
      if [ -d /tmp/site_base ]; then
        PYTHONPATH=$BASE timeout 60 python3 benchmarks/profile_textcat.py $ARGS --models rnn_bilstm \
          > "$OUT/textcat_ops_base.json" 2>> "$OUT/stderr.log"
      fi
      PYTHONPATH=$NEW timeout 90 python3 benchmarks/profile_textcat.py $ARGS \
        --models rnn_bilstm,torch_bilstm > "$OUT/textcat_ops_new.json" 2>> "$OUT/stderr.log" ;;
    textcat_ab)
      # Alternating rounds: base rnn_bilstm, then new rnn_bilstm and spaCy's
      # BiLSTM, twice.
      for r in 1 2; do
        [ -d /tmp/site_base ] && PYTHONPATH=$BASE timeout 60 python3 benchmarks/textcat_bench.py \
          --corpus-dir shared/amazon --gpu-id 0 --seconds "${TEXTCAT_SECONDS:-20}" --models rnn_bilstm ${TEXTCAT_ARGS:-} \
          > "$OUT/textcat_ab_base_$r.json" 2>> "$OUT/stderr.log"
        PYTHONPATH=$NEW timeout 100 python3 benchmarks/textcat_bench.py --corpus-dir shared/amazon \
          --gpu-id 0 --seconds "${TEXTCAT_SECONDS:-20}" --models rnn_bilstm,torch_bilstm ${TEXTCAT_ARGS:-} \
          > "$OUT/textcat_ab_new_$r.json" 2>> "$OUT/stderr.log"
      done ;;
    plain)
      # Issue 5's GPU comparisons with plain PyTorch: the text classifiers
      # (never run on a GPU) and the GRU language model.
      PYTHONPATH=$NEW timeout 300 python3 benchmarks/textcat_bench.py --corpus-dir shared/amazon \
        --gpu-id 0 --seconds "${TEXTCAT_SECONDS:-20}" \
        --models rnn_bilstm,plain_torch,plain_torch_padded,rnn_gru,plain_torch_gru \
        > "$OUT/textcat_vs_plain.json" 2>> "$OUT/stderr.log"
      PYTHONPATH=$NEW timeout 120 python3 benchmarks/lm_throughput.py --data shared/ptb \
        --seconds "$S" --gpu-id 0 --cell gru > "$OUT/lm_gru.json" 2>> "$OUT/stderr.log" ;;
    encoder)
      PYTHONPATH=$NEW timeout 60 python3 benchmarks/encoder_speed.py --data shared/amazon/reviews.jsonl \
        --max-reviews 500 --seconds 3 --gpu-id 0 > "$OUT/encoder_speed.json" 2>> "$OUT/stderr.log" ;;
    buckets)
      # Re-tuning CUDA_BUCKET_OVERHEAD: the encoder alone over more bucket
      # costs, then whole textcat steps and inference at three of them.
      PYTHONPATH=$NEW timeout 90 python3 benchmarks/encoder_speed.py --data shared/amazon/reviews.jsonl \
        --max-reviews 500 --seconds 3 --gpu-id 0 --overheads 0,16,32,64,128,256 \
        > "$OUT/encoder_buckets.json" 2>> "$OUT/stderr.log"
      for bo in 0 16 64; do
        PYTHONPATH=$NEW timeout 60 python3 benchmarks/profile_textcat.py --torch-profiler \
          --data shared/amazon/reviews.jsonl --max-docs 200 --steps 20 --infer-docs 200 --top 5 \
          --gpu-id 0 --models rnn_bilstm --rnn-bucket-overhead $bo > "$OUT/textcat_ops_bo$bo.json" \
          2>> "$OUT/stderr.log"
      done ;;
  esac
  log "end $step"
done
grep -v "VisibleDeprecationWarning\|toDlpack" "$OUT/stderr.log" 2>/dev/null | tail -15
cat "$OUT/steps.log"

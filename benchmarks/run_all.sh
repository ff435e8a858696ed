#!/usr/bin/env bash
# Run every benchmark with its default settings and keep each JSON result.
#   bash benchmarks/run_all.sh [OUT_DIR] [THREADS]
# THREADS defaults to all cores; pass 1 on a machine shared with other jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${TMPDIR:-/tmp}/spacy-rnn-benchmarks}
THREADS=${2:-0}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$PY benchmarks/encoder_speed.py --threads "$THREADS" --seconds 30 > "$OUT/encoder_speed.json"
$PY benchmarks/textcat_bench.py --threads "$THREADS" --seconds 120 > "$OUT/textcat_bench.json"
$PY benchmarks/textcat_infer_ab.py --threads "$THREADS" --gemm torch --rounds 10 > "$OUT/textcat_infer_ab.json"
$PY benchmarks/lm_throughput.py --threads "$THREADS" --data ../shared/data/ptb --seconds 60 > "$OUT/lm_throughput.json"
# The same with freed memory kept for reuse: no page-fault noise (docs/performance.md, "Language model, re-measured").
$PY benchmarks/lm_throughput.py --threads "$THREADS" --data ../shared/data/ptb --seconds 60 --keep-freed-memory > "$OUT/lm_throughput_kept_heap.json"
$PY benchmarks/quantize_bench.py --threads "$THREADS" --seconds 120 > "$OUT/quantize_bench.json"
$PY benchmarks/profile_textcat.py --threads "$THREADS" --steps 30 --out-dir "$OUT/profiles" > "$OUT/profile_textcat.json"
$PY benchmarks/profile_lm.py --threads "$THREADS" --data ../shared/data/ptb --seconds 30 > "$OUT/profile_lm.json"
$PY benchmarks/profile_lm.py --threads "$THREADS" --data ../shared/data/ptb --host-overhead --width 16 --vocab-size 500 > "$OUT/profile_lm_host_overhead.json"
$PY benchmarks/memory_growth.py --threads "$THREADS" --steps 1000 > "$OUT/memory_growth.json"
$PY benchmarks/long_doc_memory.py --tokens 1000000 > "$OUT/long_doc_memory.json"
echo "results in $OUT" >&2

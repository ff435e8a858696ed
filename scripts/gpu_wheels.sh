#!/usr/bin/env bash
# Run HERE (the dev machine) before a session's GPU runs: fetches the cp312
# wheels the lent GPU machine lacks (its image has Python 3.12, CUDA PyTorch,
# CuPy, numpy, pytest and safetensors, but no spaCy or Thinc) into .whl/,
# plus a wheel of spacy-rnn itself so its entry points exist there.
# Then: device run with carry [".whl"] and command `bash scripts/gpu_check.sh`.
# The wheels travel with the working tree (64 MiB limit): check `du -sh .whl`.
# .whl/ is in .gitignore, so it travels only when carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
# Versions pinned to what CI tests here. `datasets` reads every token file
# (the LM tests and lm_throughput need it); of its needs the image lacks only
# dill and multiprocess (it has pyarrow, pandas, fsspec, huggingface-hub...).
PKGS="spacy==3.8.18 thinc==8.3.14 blis==1.3.4 cymem==2.0.16 preshed==3.0.15
murmurhash==1.0.16 srsly==2.5.6 wasabi==1.1.3 catalogue==2.0.10 confection==1.3.4
weasel==1.0.1 cloudpathlib==0.26.0 smart-open==9.0.2 spacy-legacy==3.0.12
spacy-loggers==1.0.5 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0
typing-inspection==0.4.5
datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $PKGS
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
# ../shared does not travel, shared/ inside the checkout does (and is
# ignored by git): the real data or slices of it, small enough to keep wheels +
# tree + data under the 64 MiB limit (the benchmarks loop over them): PTB
# for lm_throughput and profile_lm, review lengths for encoder_speed and
# profile_textcat, and a .spacy subset (a seeded sample of 500 training and 400
# test reviews of `spacy project run convert-amazon`'s corpus/amazon) for
# textcat_bench.
rm -rf shared && mkdir -p shared/ptb shared/amazon
# All of PTB's training text (xz: 1.2 MB), so that the LM benchmarks run
# their default shape (exactly 10k word types, nothing masked); the GPU
# scripts unpack it.
xz -9 -c ../shared/data/ptb/ptb.train.txt > shared/ptb/ptb.train.txt.xz
head -n 1000 ../shared/data/ptb/ptb.valid.txt > shared/ptb/ptb.valid.txt  # 22k tokens: lm_throughput scores 20k
head -n 200 ../shared/data/amazon-mds/reviews.jsonl > shared/amazon/reviews.jsonl
[ -d corpus/amazon/train.spacy ] || "$PY" -m spacy_rnn convert-amazon \
  ../shared/data/amazon-mds/reviews.jsonl corpus/amazon
"$PY" - <<'PY'
import random
from pathlib import Path
import spacy
from spacy.tokens import DocBin
nlp = spacy.blank("en")
# A seeded sample, not the first N: the converted corpus is grouped by
# label, so its first 400 training reviews were all positive (session 10).
rng = random.Random(0)
for split, limit in (("train", 500), ("test", 400)):
    docs = []
    for path in sorted(Path(f"corpus/amazon/{split}.spacy").glob("*.spacy")):
        docs.extend(DocBin().from_disk(path).get_docs(nlp.vocab))
    docs = rng.sample(docs, min(limit, len(docs)))
    print(split, len(docs), "docs,", sum(d.cats.get("positive", 0) for d in docs), "positive")
    DocBin(docs=docs, store_user_data=True).to_disk(f"shared/amazon/{split}.spacy")
PY
du -sh .whl shared
# The device refuses a payload over 64 MiB, archive overhead included: keep
# 2 MiB spare (a baseline wheel in .whl/base/ for gpu_ab.sh is ~0.2 MB).
total=$(du -scb .whl shared $(git ls-files) | tail -1 | cut -f1)
echo "payload: $total bytes (limit 67108864, 2 MiB kept spare)"
if [ "$total" -gt $((67108864 - 2 * 1048576)) ]; then
  echo "payload too close to the device's 64 MiB limit: shrink shared/ or .whl/" >&2
  exit 1
fi

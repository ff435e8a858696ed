#!/usr/bin/env bash
# Create a virtual environment and install spacy-rnn into it, CPU build of
# PyTorch first (a bare "torch" requirement may pull a multi-GB CUDA build).
#
#   bash scripts/setup.sh [VENV_DIR] [EXTRAS]
#
# VENV_DIR defaults to .venv, EXTRAS to "dev". Set SPACY_RNN_TORCH to pin
# another torch version.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
EXTRAS="${2:-dev}"
TORCH="${SPACY_RNN_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

# A local CPU wheel (pip's find-links) wins: install it alone first, then
# let pip add torch's own dependencies from the normal index. Without one,
# take the CPU build from PyTorch's index.
if "$PY" -m pip install --quiet --no-index --no-deps --only-binary=:all: "$TORCH" 2>/dev/null; then
    "$PY" -m pip install --quiet "$TORCH"
elif ! "$PY" -m pip install --quiet "$TORCH" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple; then
    "$PY" -m pip install --quiet "$TORCH"
fi
"$PY" -m pip install --quiet -e ".[${EXTRAS}]"
"$PY" -c "import torch, spacy, thinc, spacy_rnn; print('spacy-rnn', spacy_rnn.__version__, '| spacy', spacy.__version__, '| thinc', thinc.__version__, '| torch', torch.__version__)"

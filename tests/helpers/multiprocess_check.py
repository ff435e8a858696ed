"""Run by tests/test_reliability.py in a fresh interpreter: trains tiny
models with torch's thread pool in use (2 threads), then compares
nlp.pipe(n_process=2) with one process. Prints one JSON line."""
import json
import os
import sys

os.environ.pop("OMP_NUM_THREADS", None)

import numpy  # noqa: E402
import torch  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import spacy_rnn  # noqa: E402,F401
from tests.test_language_model import make_lm, stream_corpus, train  # noqa: E402
from tests.util import blank_with_textcat, fixture_examples  # noqa: E402

torch.set_num_threads(2)
fix_random_seed(0)
texts = ["works great " * 40, "broke after two days", "", "the cat sat on the mat"] * 4

nlp = blank_with_textcat()
examples = fixture_examples(nlp)
nlp.initialize(lambda: examples)
optimizer = Adam(0.01)
for _ in range(3):
    nlp.update(examples, sgd=optimizer)
one = [[d.cats[k] for k in sorted(d.cats)] for d in nlp.pipe(texts, batch_size=3)]
two = [[d.cats[k] for k in sorted(d.cats)] for d in nlp.pipe(texts, batch_size=3, n_process=2)]
textcat_diff = float(numpy.abs(numpy.asarray(one) - numpy.asarray(two)).max())

lm_nlp, _ = make_lm()
lm_nlp.initialize(lambda: list(stream_corpus()(lm_nlp)))
train(lm_nlp, epochs=1)
one = [d._.lm_logprob or 0.0 for d in lm_nlp.pipe(texts, batch_size=3)]
two = [d._.lm_logprob or 0.0 for d in lm_nlp.pipe(texts, batch_size=3, n_process=2)]
lm_diff = float(numpy.abs(numpy.asarray(one) - numpy.asarray(two)).max())
print(json.dumps({"textcat_max_diff": textcat_diff, "lm_max_diff": lm_diff}))

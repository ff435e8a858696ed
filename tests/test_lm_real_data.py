"""Language modelling on real PTB (Mikolov's version) in CI time.

The slow tests train the shipped configs to their stated perplexities; this
one trains a small `rnn_lm` for a few hundred windows so that every CI run
checks, on real text, that the component learns and that its two ways of
measuring perplexity agree.
"""
import pytest
import spacy
from spacy.tokens import Doc
from thinc.api import Adam, fix_random_seed

from spacy_rnn.corpus.token_stream import TokenStreamCorpus
from spacy_rnn.optimization.global_norm import make_clip_global_norm_callback

from .util import update_in_batches

STEPS = 250
VOCAB = 5000


def _tokens(path, limit):
    tokens = []
    for line in path.read_text(encoding="utf8").splitlines():
        tokens.extend(line.split() + ["<eos>"])
        if len(tokens) >= limit:
            break
    return tokens[:limit]


def test_small_lm_learns_ptb(shared_data):
    """1x128 LSTM, 5,000 words, full softmax, 20 streams of 35 tokens, Adam
    0.003, 250 updates (175k tokens, a fifth of PTB's training text).
    Measured on the 2-core dev VM (2026-11-23), on the first 20,000
    validation tokens: perplexity 5,000 untrained (uniform), 239 after
    training, in 12 s. Word frequencies alone (a unigram model of the
    training text over the same 5,000 words) score 386, so the bound needs
    context."""
    ptb = shared_data / "ptb"
    fix_random_seed(0)
    nlp = spacy.blank("en")
    lm = nlp.add_pipe("rnn_lm", config={
        "vocab_size": VOCAB, "embed_width": 128, "hidden_width": 128, "depth": 1,
        "dropout": 0.1, "tied": False, "softmax": "full", "bptt": 35,
    })
    lm.initialize(lambda: iter([]), nlp=nlp, vocab_path=str(ptb / "ptb.train.txt"))
    make_clip_global_norm_callback(0.25, ["rnn_lm"])(nlp)
    valid = _tokens(ptb / "ptb.valid.txt", 20000)
    before = lm.evaluate_stream(valid, batch_size=10)["perplexity"]
    optimizer = Adam(0.003, grad_clip=0.0, L2=0.0)
    corpus = TokenStreamCorpus(ptb / "ptb.train.txt", n_streams=20, doc_length=35)
    assert update_in_batches(nlp, corpus(nlp), 20, STEPS, optimizer) == STEPS
    after = lm.evaluate_stream(valid, batch_size=10)
    # Untrained, the model is close to uniform over its vocabulary.
    assert before > 0.5 * VOCAB
    assert after["perplexity"] < 330, after
    assert after["tokens"] == len(valid)
    # Scoring a doc (the pipeline's path) is the stream protocol on one
    # column: the same windows, state carried, the first word after <eos>.
    doc = lm(Doc(nlp.vocab, words=valid[:2000]))
    one_column = lm.evaluate_stream(valid[:2000], batch_size=1)
    assert doc._.lm_perplexity == pytest.approx(one_column["perplexity"], rel=1e-4)

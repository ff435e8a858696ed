"""Components listening to an RNN ``tok2vec``: a text classifier and a tagger
share one ``spacy-rnn.RNNEncoder.v1`` through ``spacy.Tok2VecListener.v1``.

spaCy's ``Language.update`` steps the ``tok2vec`` before its listeners
backpropagate through that step's forward pass, which an in-place optimiser
step must survive (it once failed at the second update).
"""
import copy

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import SGD, Adam, fix_random_seed

from spacy_rnn.callbacks import find_rnn_encoders

from .util import fixture_examples

WIDTH = 32


def _listener():
    return {"@architectures": "spacy.Tok2VecListener.v1", "width": WIDTH, "upstream": "tok2vec"}


def _config(cell="lstm", **encode):
    return {
        "nlp": {"lang": "en", "pipeline": ["tok2vec", "textcat", "tagger"]},
        "components": {
            "tok2vec": {
                "factory": "tok2vec",
                "model": {
                    "@architectures": "spacy.Tok2Vec.v2",
                    "embed": {
                        "@architectures": "spacy.MultiHashEmbed.v2",
                        "width": WIDTH,
                        "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
                        "rows": [500, 100, 100, 50],
                        "include_static_vectors": False,
                    },
                    "encode": {
                        "@architectures": "spacy-rnn.RNNEncoder.v1",
                        "width": WIDTH,
                        "depth": 2,
                        "cell": cell,
                        "bidirectional": True,
                        "residual": True,
                        **encode,
                    },
                },
            },
            "textcat": {
                "factory": "textcat",
                "model": {
                    "@architectures": "spacy-rnn.TextCatRNN.v1",
                    "exclusive_classes": True,
                    "pooling": "attention",
                    "tok2vec": _listener(),
                },
            },
            "tagger": {
                "factory": "tagger",
                "model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener()},
            },
        },
    }


def _tag(token) -> str:
    # A word's tag depends on its neighbour, so the tagger needs the encoder's
    # context and not only the token's own embedding.
    if not token.is_alpha:
        return "PUNCT"
    if token.i > 0 and token.nbor(-1).lower_ in ("and", "but", "not"):
        return "AFTER"
    return "WORD"


def _examples(nlp):
    examples = []
    for eg in fixture_examples(nlp):
        doc = eg.reference
        examples.append(
            Example.from_dict(
                nlp.make_doc(doc.text), {"cats": doc.cats, "tags": [_tag(t) for t in doc]}
            )
        )
    return examples


def _train(nlp, examples, optimizer, steps):
    history = []
    for _ in range(steps):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        history.append(losses)
    return history


def _scores(nlp, examples):
    return nlp.evaluate(copy.deepcopy(examples))


@pytest.mark.parametrize(
    "optimizer,steps",
    [(lambda: Adam(0.01), 25), (lambda: SGD(0.2), 40)],
    ids=["adam-in-place-torch-step", "sgd-generic-step"],
)
def test_textcat_and_tagger_learn_through_one_rnn_tok2vec(optimizer, steps):
    fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(_config(), auto_fill=True, validate=True)
    assert nlp.get_pipe("tok2vec").listening_components == ["textcat", "tagger"]
    examples = _examples(nlp)
    nlp.initialize(lambda: examples)
    (encoder,) = find_rnn_encoders(nlp, "tok2vec")
    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    history = _train(nlp, examples, optimizer(), steps)
    # The encoder learns from both listeners (spaCy records their gradients'
    # squared norm as the tok2vec loss).
    assert history[-1]["tok2vec"] > 0
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert history[-1]["textcat"] < history[0]["textcat"]
    assert history[-1]["tagger"] < 0.5 * history[0]["tagger"]
    scores = _scores(nlp, examples)
    assert scores["tag_acc"] >= 0.95
    assert scores["cats_macro_f"] >= 0.9


@pytest.mark.parametrize("cell,encode", [("gru", {}), ("lstm", {"weight_drop": 0.2, "locked_dropout": True, "dropout": 0.1})])
def test_listener_variants_train_and_round_trip(cell, encode):
    fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(_config(cell, **encode), auto_fill=True, validate=True)
    examples = _examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    history = _train(nlp, examples, optimizer, 6)
    assert history[-1]["tagger"] < history[0]["tagger"]
    texts = [eg.reference.text for eg in examples[:6]] + ["", "   ", "!!"]
    expected = list(nlp.pipe(texts))
    loaded = spacy.util.load_model_from_config(nlp.config, auto_fill=True, validate=True)
    loaded.from_bytes(nlp.to_bytes())
    for want, got in zip(expected, loaded.pipe(texts)):
        assert [t.tag_ for t in got] == [t.tag_ for t in want]
        for label, value in want.cats.items():
            assert got.cats[label] == pytest.approx(value, abs=1e-6)
        numpy.testing.assert_allclose(got.tensor, want.tensor, atol=1e-6)

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


@pytest.mark.parametrize(
    "cell,encode",
    [
        ("gru", {}),
        ("lstm", {"weight_drop": 0.2, "locked_dropout": True, "dropout": 0.1}),
        ("lstm", {"mixed_precision": True}),  # bfloat16 autocast on CPU
    ],
)
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


def _predictions(nlp, texts):
    return [([t.tag_ for t in doc], doc.cats) for doc in nlp.pipe(texts)]


def _assert_same(a, b):
    for (tags_a, cats_a), (tags_b, cats_b) in zip(a, b):
        assert tags_a == tags_b
        for label, value in cats_a.items():
            assert cats_b[label] == pytest.approx(value, abs=1e-6)


def test_replace_listeners_gives_each_component_its_own_encoder(tmp_path):
    fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(_config(), auto_fill=True, validate=True)
    examples = _examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    _train(nlp, examples, optimizer, 5)
    texts = [eg.reference.text for eg in examples[:8]]
    shared = _predictions(nlp, texts)
    # What `spacy assemble` / sourcing a component does.
    for name in ("textcat", "tagger"):
        nlp.replace_listeners("tok2vec", name, ["model.tok2vec"])
    nlp.remove_pipe("tok2vec")
    _assert_same(shared, _predictions(nlp, texts))
    (textcat_rnn,) = find_rnn_encoders(nlp, "textcat")
    (tagger_rnn,) = find_rnn_encoders(nlp, "tagger")
    assert next(textcat_rnn.parameters()).data_ptr() != next(tagger_rnn.parameters()).data_ptr()
    # The copies train on their own and save and load.
    before = next(tagger_rnn.parameters()).detach().clone()
    nlp.update(examples, sgd=optimizer, exclude=["tagger"])
    assert torch.equal(next(tagger_rnn.parameters()), before)
    nlp.to_disk(tmp_path / "pipeline")
    _assert_same(_predictions(nlp, texts), _predictions(spacy.load(tmp_path / "pipeline"), texts))


def test_spacy_pretrain_output_initialises_the_rnn_tok2vec(tmp_path):
    """`spacy pretrain` trains the RNN tok2vec, and `[paths] init_tok2vec`
    loads exactly those weights."""
    import json
    import subprocess
    import sys

    from spacy.training.initialize import init_nlp
    from spacy.tokens import DocBin

    nlp = spacy.util.load_model_from_config(_config(), auto_fill=True, validate=True)
    examples = _examples(nlp)
    DocBin(docs=[eg.reference for eg in examples]).to_disk(tmp_path / "train.spacy")
    with (tmp_path / "raw.jsonl").open("w") as f:
        for eg in examples:
            f.write(json.dumps({"text": eg.reference.text}) + "\n")
    config = nlp.config.copy()
    config["paths"].update({"train": "train.spacy", "dev": "train.spacy", "raw_text": "raw.jsonl"})
    config.to_disk(tmp_path / "partial.cfg")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "spacy", *args], cwd=tmp_path, capture_output=True, text=True
    )
    filled = run("init", "fill-config", "partial.cfg", "config.cfg", "--pretraining")
    assert filled.returncode == 0, filled.stderr
    pretrained = run("pretrain", "config.cfg", "pretrain", "--pretraining.max_epochs", "2")
    assert pretrained.returncode == 0, pretrained.stdout + pretrained.stderr
    weights = tmp_path / "pretrain" / "model-last.bin"
    assert weights.exists()

    def encoder(init_tok2vec):
        config = spacy.util.load_config(
            tmp_path / "config.cfg",
            overrides={
                "paths.train": str(tmp_path / "train.spacy"),
                "paths.dev": str(tmp_path / "train.spacy"),
                "paths.init_tok2vec": init_tok2vec,
            },
        )
        (stack,) = find_rnn_encoders(init_nlp(config), "tok2vec")
        return stack.state_dict()

    fresh, loaded = encoder(None), encoder(str(weights))
    reference = spacy.util.load_model_from_config(_config(), auto_fill=True, validate=True)
    reference.initialize(lambda: examples)
    reference.get_pipe("tok2vec").model.from_bytes(weights.read_bytes())
    (expected,) = find_rnn_encoders(reference, "tok2vec")
    for name, value in expected.state_dict().items():
        assert torch.equal(loaded[name], value), name
    assert any(not torch.equal(fresh[name], loaded[name]) for name in fresh)


def test_ner_learns_through_an_rnn_tok2vec_listener():
    fix_random_seed(0)
    config = _config()
    config["nlp"]["pipeline"] = ["tok2vec", "ner"]
    del config["components"]["textcat"], config["components"]["tagger"]
    config["components"]["ner"] = {
        "factory": "ner",
        "model": {
            "@architectures": "spacy.TransitionBasedParser.v2",
            "state_type": "ner",
            "extra_state_tokens": False,
            "hidden_width": 32,
            "maxout_pieces": 2,
            "use_upper": True,
            "tok2vec": _listener(),
        },
    }
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    marked = {"great", "perfectly", "love", "excellent", "terrible", "damaged"}
    examples = []
    for eg in fixture_examples(nlp):
        doc = nlp.make_doc(eg.reference.text)
        spans = [(t.idx, t.idx + len(t), "SENT") for t in doc if t.lower_ in marked]
        examples.append(Example.from_dict(doc, {"entities": spans}))
    assert sum(len(eg.reference.ents) for eg in examples) >= 10
    optimizer = nlp.initialize(lambda: examples)
    _train(nlp, examples, optimizer, 70)
    assert _scores(nlp, examples)["ents_f"] >= 0.95

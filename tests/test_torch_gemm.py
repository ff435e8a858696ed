"""spacy_rnn.torch_gemm.v1: Thinc's CPU matrix products through PyTorch."""
import json

import numpy
import pytest
import spacy
from spacy.util import load_model_from_config
from thinc.api import Adam, Config, Linear, NumpyOps, fix_random_seed

from spacy_rnn.optimization.torch_gemm import TorchGemmOps, use_torch_gemm

from .util import SMALL_TEXTCAT_MODEL, blank_with_textcat, fixture_examples

TEXTS = ["A wonderful, sturdy kettle.", "Broke after a week. Avoid!", "ok"]


def _plain_numpy_layers(nlp):
    return [
        node
        for _, pipe in nlp.components
        if hasattr(pipe, "model")
        for node in pipe.model.walk()
        if type(node.ops) is NumpyOps
    ]


def _scores(nlp):
    return numpy.array([[d.cats[k] for k in sorted(d.cats)] for d in nlp.pipe(TEXTS)])


def test_switches_every_plain_numpy_layer_and_keeps_predictions():
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    # Trained a little: the zero-initialised output layer predicts exactly
    # 0.5 whatever computes the products.
    optimizer = Adam(0.01)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    before = _scores(nlp)
    assert numpy.abs(before - 0.5).max() > 1e-3, before
    n_plain = len(_plain_numpy_layers(nlp))
    assert n_plain > 0
    assert use_torch_gemm(nlp) == n_plain
    assert _plain_numpy_layers(nlp) == []
    # Only the library under the matrix products changed: float32 rounding.
    numpy.testing.assert_allclose(_scores(nlp), before, atol=1e-5)
    assert use_torch_gemm(nlp) == 0


def test_training_with_torch_gemm_overfits():
    nlp = blank_with_textcat()
    use_torch_gemm(nlp)
    examples = fixture_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(30):
        nlp.update(examples, sgd=optimizer)
    assert _plain_numpy_layers(nlp) == []
    for eg in examples:
        doc = nlp(eg.reference.text)
        gold = max(eg.reference.cats, key=eg.reference.cats.get)
        assert max(doc.cats, key=doc.cats.get) == gold


def _trained_listener_pipeline(torch_gemm):
    fix_random_seed(0)
    nlp = spacy.blank("en")
    tok2vec = json.loads(json.dumps(SMALL_TEXTCAT_MODEL["tok2vec"]))
    nlp.add_pipe("tok2vec", config={"model": tok2vec})
    model = json.loads(json.dumps(SMALL_TEXTCAT_MODEL))
    model["tok2vec"] = {"@architectures": "spacy.Tok2VecListener.v1", "width": 32}
    nlp.add_pipe("textcat", config={"model": model})
    n_switched = use_torch_gemm(nlp) if torch_gemm else 0
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    # A few steps: the zero-initialised output layer predicts exactly 0.5
    # whatever computes the products, and the listener's backward pass into
    # the shared tok2vec only shows after an update.
    optimizer = Adam(0.01)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    return nlp, n_switched


def test_listener_pipelines_switch_both_components():
    nlp, n_switched = _trained_listener_pipeline(torch_gemm=True)
    assert n_switched > 0
    assert _plain_numpy_layers(nlp) == []
    reference, _ = _trained_listener_pipeline(torch_gemm=False)
    assert _plain_numpy_layers(reference)
    # Same seed, same steps: only float32 rounding apart (measured 6e-8;
    # with another seed the scores are 0.0075 away).
    numpy.testing.assert_allclose(_scores(nlp), _scores(reference), atol=1e-5)


def test_other_backends_are_left_alone():
    class OtherOps(NumpyOps):
        name = "other_for_test"

    other = OtherOps()
    layer = Linear(4, 3)
    layer.ops = other
    assert use_torch_gemm(layer) == 0 and layer.ops is other
    plain = Linear(4, 3)
    plain.ops = NumpyOps(use_blis=False)
    assert use_torch_gemm(plain) == 1 and isinstance(plain.ops, TorchGemmOps)


CONFIG = """
[nlp]
lang = "en"
pipeline = ["textcat"]

[nlp.after_pipeline_creation]
@callbacks = "spacy_rnn.torch_gemm.v1"

[components]

[components.textcat]
factory = "rnn_textcat"
"""


def test_callback_from_config_survives_save_and_load(tmp_path):
    config = Config().from_str(CONFIG)
    config["components"]["textcat"]["model"] = json.loads(json.dumps(SMALL_TEXTCAT_MODEL))
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    assert _plain_numpy_layers(nlp) == []
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(3):  # away from the untrained model's 0.5 everywhere
        nlp.update(examples, sgd=optimizer)
    expected = _scores(nlp)
    assert numpy.abs(expected - 0.5).max() > 1e-3, expected
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    # spaCy runs after_pipeline_creation again on load.
    assert _plain_numpy_layers(loaded) == []
    numpy.testing.assert_array_equal(_scores(loaded), expected)


def test_callback_runs_then():
    from spacy_rnn.optimization.torch_gemm import make_torch_gemm_callback

    seen = []
    callback = make_torch_gemm_callback(then=lambda nlp: seen.append(nlp) or nlp)
    nlp = blank_with_textcat()
    assert callback(nlp) is nlp and seen == [nlp]
    assert _plain_numpy_layers(nlp) == []


@pytest.mark.parametrize(
    "name", ["textcat_bilstm.cfg", "textcat_gru.cfg", "textcat_bilstm_vectors.cfg"]
)
def test_shipped_textcat_configs_use_torch_gemm(name):
    from .util import ROOT

    config = Config().from_disk(ROOT / "configs" / name)
    assert config["nlp"]["after_pipeline_creation"]["@callbacks"] == "spacy_rnn.torch_gemm.v1"


@pytest.mark.parametrize("trans1", [False, True])
@pytest.mark.parametrize("trans2", [False, True])
def test_gemm_matches_numpy_and_overwrites_out(trans1, trans2):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((7, 5) if not trans1 else (5, 7), dtype="float32")
    y = rng.standard_normal((5, 3) if not trans2 else (3, 5), dtype="float32")
    expected = (x.T if trans1 else x) @ (y.T if trans2 else y)
    ops = TorchGemmOps()
    got = ops.gemm(x, y, trans1=trans1, trans2=trans2)
    assert isinstance(got, numpy.ndarray) and got.dtype == numpy.float32
    numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    out = numpy.full((7, 3), 99.0, dtype="float32")
    assert ops.gemm(x, y, out=out, trans1=trans1, trans2=trans2) is out
    numpy.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gemm_falls_back_to_numpy_for_what_torch_cannot_view():
    ops = TorchGemmOps()
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((4, 6))  # float64
    y = rng.standard_normal((6, 2))
    numpy.testing.assert_allclose(ops.gemm(x, y), x @ y)
    x32 = x.astype("float32")
    x32.flags.writeable = False
    numpy.testing.assert_allclose(ops.gemm(x32, y.astype("float32")), x @ y, rtol=1e-5)
    reversed_rows = x.astype("float32")[::-1]
    numpy.testing.assert_allclose(
        ops.gemm(reversed_rows, y.astype("float32")), x[::-1] @ y, rtol=1e-5
    )
    # A strided out on the fallback path is written in place too.
    big = numpy.zeros((4, 5))
    ops.gemm(x, y, out=big[:, 1:3])
    numpy.testing.assert_allclose(big[:, 1:3], x @ y)
    with pytest.raises(ValueError, match="2-dimensional"):
        ops.gemm(x[0].astype("float32"), y.astype("float32"))


def test_gemm_writes_into_a_strided_out_view():
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((7, 5), dtype="float32")
    y = rng.standard_normal((5, 3), dtype="float32")
    big = numpy.zeros((7, 6), dtype="float32")
    out = big[:, 1:4]  # rows 6 floats apart: not contiguous
    TorchGemmOps().gemm(x, y, out=out)
    numpy.testing.assert_allclose(big[:, 1:4], x @ y, rtol=1e-5, atol=1e-5)
    assert not big[:, 0].any() and not big[:, 4:].any()


def test_spacy_ner_trains_with_torch_gemm():
    # spaCy's parser family calls gemm with out= (its precomputable affine).
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("ner")
    assert use_torch_gemm(nlp) > 0
    examples = [
        Example.from_dict(nlp.make_doc("I like London and Berlin ."),
                          {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
        Example.from_dict(nlp.make_doc("Paris is far from Tokyo ."),
                          {"entities": [(0, 5, "LOC"), (18, 23, "LOC")]}),
    ]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    assert _plain_numpy_layers(nlp) == []
    doc = nlp("I like London and Berlin .")
    assert [(e.text, e.label_) for e in doc.ents] == [("London", "LOC"), ("Berlin", "LOC")]

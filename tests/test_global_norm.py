import json
import math
import subprocess
import sys

import numpy
import pytest
from thinc.api import Adam, fix_random_seed

from spacy_rnn.optimization.global_norm import (
    clip_global_norm,
    clip_global_norm_async,
    make_clip_global_norm_callback,
)

from .util import ROOT, blank_with_textcat, fixture_examples


def _grads(model):
    out = []
    for node in model.walk():
        out.extend(node.get_grad(n) for n in node.param_names if node.has_grad(n))
        for shim in node.shims:
            out.extend(p.grad.numpy() for p in shim._model.parameters() if p.grad is not None)
    return out


def _norm(grads):
    return math.sqrt(sum(float((g * g).sum()) for g in grads))


def _nlp_with_grads():
    fix_random_seed(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    # One real step first: the output layer starts at zero, so the first
    # backward pass leaves every gradient below it, the torch ones included,
    # at exactly zero, and clipping them would prove nothing.
    nlp.update(examples, sgd=Adam(0.01))
    nlp.update(examples, sgd=False)
    return nlp


def test_clipping_rescales_whole_gradient_including_torch():
    model = _nlp_with_grads().get_pipe("rnn_textcat").model
    grads = _grads(model)
    before = [g.copy() for g in grads]
    norm = _norm(grads)
    assert any(isinstance(g, numpy.ndarray) for g in grads)
    torch_grads = [p.grad for node in model.walk() for shim in node.shims
                   for p in shim._model.parameters() if p.grad is not None]
    assert torch_grads and all(float(g.abs().max()) > 0 for g in torch_grads)
    reported = clip_global_norm(model, norm / 10)
    assert reported == pytest.approx(norm, rel=1e-4)
    after = _grads(model)
    assert _norm(after) == pytest.approx(norm / 10, rel=1e-3)
    # One common factor: the direction of the update is unchanged.
    for b, a in zip(before, after):
        assert numpy.allclose(a, b / 10, rtol=1e-3, atol=1e-8)


def test_no_clipping_below_the_threshold():
    model = _nlp_with_grads().get_pipe("rnn_textcat").model
    before = [g.copy() for g in _grads(model)]
    norm = _norm(before)
    clip_global_norm(model, norm * 2)
    # The factor is clamped to exactly 1: gradients are bit-identical.
    for b, a in zip(before, _grads(model)):
        assert numpy.array_equal(a, b)


def test_callback_wraps_named_component_and_checks_names():
    nlp = _nlp_with_grads()
    norm = _norm(_grads(nlp.get_pipe("rnn_textcat").model))
    make_clip_global_norm_callback(0.5, ["rnn_textcat"])(nlp)
    textcat = nlp.get_pipe("rnn_textcat")
    textcat.finish_update(Adam(0.001))
    assert textcat.cfg["last_grad_norm"] == pytest.approx(norm, rel=1e-4)
    with pytest.raises(ValueError, match="no component named"):
        make_clip_global_norm_callback(0.5, ["nope"])(nlp)


def test_async_norm_is_lazy_and_a_pending_reading_is_recorded_next_step(monkeypatch):
    from spacy_rnn.torch_modules.transfer import HostScalar

    nlp = _nlp_with_grads()
    model = nlp.get_pipe("rnn_textcat").model
    norm = _norm(_grads(model))
    reading = clip_global_norm_async(model, norm / 4)
    assert isinstance(reading, HostScalar)
    assert float(reading) == pytest.approx(norm, rel=1e-4)
    assert _norm(_grads(model)) == pytest.approx(norm / 4, rel=1e-3)
    # A reading that is not ready yet (a GPU still busy) is not waited for:
    # the step goes on and the value is recorded at the next step.
    nlp = _nlp_with_grads()
    make_clip_global_norm_callback(1e9, ["rnn_textcat"])(nlp)
    textcat = nlp.get_pipe("rnn_textcat")
    monkeypatch.setattr(HostScalar, "ready", lambda self: False)
    textcat.finish_update(Adam(0.001))
    assert "last_grad_norm" not in textcat.cfg
    nlp.update(fixture_examples(nlp), sgd=Adam(0.001))
    assert textcat.cfg["last_grad_norm"] == pytest.approx(norm, rel=1e-4)


def test_config_setting_trains(fixture_corpus, tmp_path):
    corpus = fixture_corpus
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         "--output", str(tmp_path / "out"), "--paths.train", str(corpus / "train.spacy"),
         "--paths.dev", str(corpus / "train.spacy"), "--training.max_steps", "4",
         "--training.eval_frequency", "2", "--training.optimizer.grad_clip", "0",
         "--initialize.after_init", '{"@callbacks": "spacy_rnn.clip_global_norm.v1", "max_norm": 0.25, "components": ["textcat"]}',
         "--components.textcat.model.tok2vec.embed.width", "32",
         "--components.textcat.model.tok2vec.encode.width", "32"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # The wrapped finish_update records the norm it clipped, and the
    # component's cfg is saved with the pipeline. Above max_norm means the
    # step was scaled down (measured 5.9 at the last step, clipped to 0.25).
    cfg = json.loads((tmp_path / "out" / "model-last" / "textcat" / "cfg").read_text())
    assert cfg["last_grad_norm"] > 0.25, cfg


def test_cached_views_follow_the_arrays_thinc_holds():
    # The callback keeps torch views of Thinc's gradient arrays between steps;
    # a replaced array must be seen, a stale view must not be scaled.
    model = _nlp_with_grads().get_pipe("rnn_textcat").model
    views = {}
    norm = _norm(_grads(model))
    clip_global_norm_async(model, norm / 2, views)
    assert _norm(_grads(model)) == pytest.approx(norm / 2, rel=1e-3)
    node, name = next((n, p) for n in model.walk() for p in n.param_names if n.has_grad(p))
    old = node.get_grad(name)
    node.set_grad(name, old.copy())
    assert node.get_grad(name) is not old
    before = [g.copy() for g in _grads(model)]
    clip_global_norm_async(model, _norm(before) / 4, views)
    for b, a in zip(before, _grads(model)):
        assert numpy.allclose(a, b / 4, rtol=1e-3, atol=1e-8)
    assert id(old) not in views or views[id(old)][0] is not old

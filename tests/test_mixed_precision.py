"""``mixed_precision = true`` on CPU (bfloat16 autocast) for ``rnn_lm`` and
the RNN encoder.

The CUDA path (float16 with Thinc's gradient scaler) is in test_gpu.py.
"""
import math

import numpy
import pytest
import torch
from thinc.api import fix_random_seed

from spacy_rnn.optimization.global_norm import clip_global_norm

from .test_language_model import dev_examples, make_lm, stream_corpus, train


def _trained(mixed_precision, epochs=40):
    fix_random_seed(0)
    nlp, lm = make_lm(mixed_precision=mixed_precision)
    nlp.initialize(lambda: stream_corpus()(nlp))
    history = train(nlp, epochs)
    return nlp, lm, history


def test_mixed_precision_is_in_the_default_config():
    nlp, lm = make_lm()
    assert lm.cfg["mixed_precision"] is False
    assert nlp.config["components"]["rnn_lm"]["mixed_precision"] is False
    assert nlp.config["components"]["rnn_lm"]["grad_scaler"] is None


def test_bfloat16_training_memorises_like_float32():
    nlp, lm, history = _trained(True)
    _, _, history32 = _trained(False)
    assert history[-1] < history[0] / 3
    after = nlp.evaluate(dev_examples(nlp))
    # float32 reaches < 1.6 on this fixture (test_language_model.py).
    assert after["lm_ppl"] < 1.8
    assert abs(history[-1] - history32[-1]) < 0.25 * history32[0]
    # Autocast changes the arithmetic, never the stored weights.
    assert all(p.dtype == torch.float32 for p in lm.module.parameters())


def test_forward_runs_in_bfloat16_and_scores_in_float32():
    nlp, lm = make_lm(mixed_precision=True)
    nlp.initialize(lambda: stream_corpus()(nlp))
    seen = []
    hook = lm.module.fwd.fwd[0].register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    try:
        doc = nlp("the cat sat on the mat")
    finally:
        hook.remove()
    assert seen == [torch.bfloat16]
    dist = lm.predict_distributions(doc)
    assert dist.dtype.name == "float32"
    assert abs(float(torch.logsumexp(torch.as_tensor(dist[0]), 0))) < 1e-4
    # The doc's score is read from those float32 rows. Untrained, the model
    # is near uniform over the 20 word types (19.97-20.08 over eight seeds):
    # the 4 spare rows stay masked under autocast (unmasked: 23.96-24.10).
    ids = lm.doc_ids(doc)
    mean_surprisal = -float(dist[numpy.arange(len(doc)), ids].mean())
    assert doc._.lm_perplexity == pytest.approx(math.exp(mean_surprisal), rel=1e-5)
    assert 19 < doc._.lm_perplexity < 21


def test_mixed_precision_scores_match_float32_closely():
    nlp, lm, _ = _trained(False, epochs=10)
    texts = ["the cat sat on the mat", "a dog ran"]
    ref = [d._.lm_logprob for d in nlp.pipe(texts)]
    lm.cfg["mixed_precision"] = True
    lm.model.shims[0].wants_mixed_precision = True
    low = [d._.lm_logprob for d in nlp.pipe(texts)]
    # bfloat16 keeps ~3 significant digits: close, not equal.
    for a, b in zip(ref, low):
        assert a != b
        assert b == pytest.approx(a, rel=0.05)


def test_loss_scaling_is_undone_before_clipping_and_the_step():
    """With a scaler (what CUDA mixed precision uses), gradients reach the
    clipper and the optimiser divided by the loss scale, exactly once."""
    nlp, lm = make_lm()
    nlp.initialize(lambda: stream_corpus()(nlp))
    shim = lm.model.shims[0]
    examples = list(stream_corpus()(nlp))[:4]

    def grads():
        return [p.grad.clone() for p in lm.module.parameters() if p.grad is not None]

    fix_random_seed(1)
    lm.update(examples)
    plain = grads()
    for p in lm.module.parameters():
        p.grad = None

    class FakeScaler:
        # Thinc's PyTorchGradScaler only accepts CUDA tensors; this one
        # multiplies by 1024 on any device and records the unscale calls.
        found_inf = False
        unscaled = 0

        def scale(self, loss):
            return loss * 1024.0

        def unscale(self, tensors):
            self.unscaled += 1
            for t in tensors:
                t.div_(1024.0)
            return False

        def update(self):
            pass

    shim._grad_scaler = FakeScaler()
    fix_random_seed(1)
    lm.update(examples[:2])
    lm.update(examples[2:])  # accumulated: unscaled once for both
    # Same examples in two halves: the sum of the halves' gradients.
    clip_global_norm(lm.model, 1e9)
    assert shim._grad_scaler.unscaled == 1
    clip_global_norm(lm.model, 1e9)
    assert shim._grad_scaler.unscaled == 1
    halves = grads()
    assert len(halves) == len(plain)
    total_plain = sum(float(g.pow(2).sum()) for g in plain)
    total_halves = sum(float(g.pow(2).sum()) for g in halves)
    # Not bit-equal (the halves' windows normalise by their own token
    # counts), but the same magnitude: a missing unscale would be 1024x.
    assert 0.2 < total_halves / total_plain < 5


def test_encoder_mixed_precision_trains_on_cpu_in_bfloat16():
    """Thinc's shim autocasts on CUDA only and its scaler refuses CPU
    tensors: on CPU this used to fail at the first backward pass."""
    from thinc.api import Adam

    from spacy_rnn.layers.rnn_encoder import RNNEncoder

    fix_random_seed(0)
    model = RNNEncoder(8, depth=2, mixed_precision=True)
    shim = model.shims[0]
    assert not shim._grad_scaler._enabled
    seen = []
    shim._model.fwd[0].register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    rng = numpy.random.RandomState(0)
    Xs = [rng.rand(n, 8).astype("float32") for n in (5, 0, 7)]
    target = [numpy.tanh(x[:, ::-1]).copy() for x in Xs]
    model.initialize(X=Xs)
    optimizer = Adam(0.02)
    losses = []
    for _ in range(60):
        Ys, backprop = model(Xs, is_train=True)
        assert all(y.dtype == numpy.float32 for y in Ys)
        dYs = [y - t for y, t in zip(Ys, target)]
        losses.append(sum(float((d ** 2).sum()) for d in dYs))
        dXs = backprop(dYs)
        assert [d.shape for d in dXs] == [(5, 8), (0, 8), (7, 8)]
        model.finish_update(optimizer)
    assert seen and set(seen) == {torch.bfloat16}
    assert losses[-1] < losses[0] / 2
    assert all(p.dtype == torch.float32 for p in shim._model.parameters())
    Y = model.predict(Xs)
    assert all(numpy.isfinite(y).all() for y in Y)


def test_evaluate_lm_float32_overrides_a_mixed_precision_pipeline(tmp_path):
    from spacy_rnn.cli.evaluate_lm import evaluate_lm_file

    from .test_language_model import STREAM

    nlp, lm, _ = _trained(True, epochs=5)
    nlp.to_disk(tmp_path / "lm")
    mixed = evaluate_lm_file(tmp_path / "lm", STREAM, batch_size=3, bptt=5)
    full = evaluate_lm_file(tmp_path / "lm", STREAM, batch_size=3, bptt=5, float32=True)
    assert mixed["mixed_precision"] is True and full["mixed_precision"] is False
    assert mixed["tokens"] == full["tokens"] == 318
    assert mixed["nll"] != full["nll"]
    assert mixed["perplexity"] == pytest.approx(full["perplexity"], rel=0.05)


def test_warns_when_the_cpu_has_no_bfloat16_units(monkeypatch):
    from spacy_rnn.layers import torch_shim

    monkeypatch.setattr(torch_shim, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="without bfloat16"):
        make_lm(mixed_precision=True)
    monkeypatch.setattr(torch_shim, "cpu_has_bfloat16", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_lm(mixed_precision=True)

"""GPU checks: run with `pytest -m gpu` on a machine with CUDA (skipped
without one). They need CuPy as well as a CUDA build of torch."""
import os
import subprocess
import sys

import numpy
import pytest
import torch

from spacy_rnn.torch_modules.rnn_stack import RNNStack

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["reverse", "packed", "auto"])
def test_cuda_encoding_is_exact_and_matches_cpu(method, monkeypatch):
    # cuDNN's RNNs use TF32 tensor cores by default (about 3 decimal digits,
    # 2e-4 off the CPU here on an H100); compare the exact float32 maths.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = RNNStack(16, 32, depth=2, method=method).eval()
    gpu = RNNStack(16, 32, depth=2, method=method).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    lengths = [40, 3, 0, 17, 1]
    x = torch.randn(sum(lengths), 16)
    with torch.no_grad():
        y_cpu = cpu(x, lengths)
        y_gpu = gpu(x.cuda(), lengths).cpu()
        alone = gpu(x[:40].cuda(), [40]).cpu()
    assert torch.allclose(y_cpu, y_gpu, atol=1e-4)
    # "reverse" (and "auto", which is "reverse") is exact to float32
    # rounding. cuDNN's packed kernel is not: on an H100 a doc's output
    # changed with its batch mates by more than 1e-5 in one of three runs,
    # which is why "auto" no longer picks it on CUDA.
    atol = 1e-4 if method == "packed" else 1e-5
    assert torch.allclose(alone, y_gpu[:40], atol=atol)


def test_mean_pooling_on_gpu_matches_the_cpu():
    from thinc.api import CupyOps, NumpyOps

    from spacy_rnn.layers.pooling import rnn_pooling

    rng = numpy.random.default_rng(0)
    Xs = [rng.normal(size=(n, 8)).astype("float32") for n in (3, 0, 4000, 1, 17)]
    dY = rng.normal(size=(len(Xs), 8)).astype("float32")
    results = []
    for ops in (NumpyOps(), CupyOps()):
        pool = rnn_pooling("mean", 8)
        pool.ops = ops
        Y, backprop = pool([ops.asarray2f(X) for X in Xs], is_train=True)
        dXs = backprop(ops.asarray2f(dY))
        results.append((ops.to_numpy(Y), [ops.to_numpy(d) for d in dXs]))
    (y_cpu, dx_cpu), (y_gpu, dx_gpu) = results
    assert numpy.allclose(y_cpu, y_gpu, rtol=1e-5, atol=1e-6)
    assert not y_gpu[1].any()
    assert all(numpy.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(dx_cpu, dx_gpu))


def test_train_on_gpu_then_predict_on_cpu(tmp_path):
    from thinc.api import Adam, require_gpu, set_gpu_allocator

    from .util import blank_with_textcat, fixture_examples

    set_gpu_allocator("pytorch")
    require_gpu(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    texts = ["works great", "broke after two days"]
    gpu_scores = [[d.cats[k] for k in sorted(d.cats)] for d in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "pipeline")
    cpu_scores = _scores_in_a_cpu_process(
        tmp_path / "pipeline", texts, "[d.cats[k] for k in sorted(d.cats)]"
    )
    assert numpy.allclose(numpy.asarray(gpu_scores), numpy.asarray(cpu_scores), atol=1e-4)


def _scores_in_a_cpu_process(path, texts, expression):
    # A fresh process that cannot see the GPU loads the pipeline and prints
    # `expression` (of `d`) for each doc.
    import json

    script = (
        "import json, spacy\n"
        f"nlp = spacy.load({str(path)!r})\n"
        f"print(json.dumps([{expression} for d in nlp.pipe({texts!r})]))\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mixed_precision_encoder_runs():
    from thinc.api import get_current_ops, require_gpu

    from spacy_rnn.layers.rnn_encoder import RNNEncoder

    require_gpu(0)
    ops = get_current_ops()
    model = RNNEncoder(32, depth=2, mixed_precision=True)
    Xs = [ops.xp.random.rand(n, 32).astype("float32") for n in (5, 0, 9)]
    model.initialize(X=Xs)
    Ys, backprop = model(Xs, is_train=True)
    assert all(y.dtype == numpy.float32 for y in Ys)
    assert [y.shape for y in Ys] == [(5, 32), (0, 32), (9, 32)]
    dXs = backprop([ops.xp.ones_like(y) for y in Ys])
    assert [d.shape for d in dXs] == [(5, 32), (0, 32), (9, 32)]


def test_torch_adam_step_on_cuda_matches_cpu():
    pytest.importorskip("cupy")
    from thinc.api import Adam

    from spacy_rnn.optimization.torch_adam import thinc_adam_step

    torch.manual_seed(0)
    cpu = torch.nn.LSTM(8, 6)
    gpu = torch.nn.LSTM(8, 6)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    opt_cpu, opt_gpu = Adam(0.01, grad_clip=0.5), Adam(0.01, grad_clip=0.5)
    for step in range(5):
        for a, b in zip(cpu.parameters(), gpu.parameters()):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.cuda()
        assert thinc_adam_step(opt_cpu, 1, list(cpu.named_parameters()), {})
        assert thinc_adam_step(opt_gpu, 1, list(gpu.named_parameters()), {})
    for a, b in zip(cpu.parameters(), gpu.parameters()):
        assert torch.allclose(a.detach(), b.detach().cpu(), atol=1e-5)


def test_weight_drop_keeps_cudnn_fused_without_warnings():
    """DropConnect swaps in a dropped copy of weight_hh for each call; cuDNN
    must still get one contiguous weight buffer (no "not part of single
    contiguous chunk" warning) and the gradient must reach the raw weight."""
    import warnings

    stack = RNNStack(16, 32, depth=2, bidirectional=True, weight_drop=0.5).cuda().train()
    x = torch.randn(30, 16, device="cuda")
    ptrs = [p.data_ptr() for p in stack.parameters()]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*contiguous chunk of memory.*")
        y1 = stack(x, [20, 10])
        y2 = stack(x, [20, 10])
        y1.sum().backward()
        stack.eval()
        y3 = stack(x, [20, 10])
        y4 = stack(x, [20, 10])
    assert not torch.equal(y1, y2)  # a fresh mask per call
    assert torch.equal(y3, y4)  # no dropping at inference
    # Nothing was re-flattened: the parameters still live where they did.
    assert [p.data_ptr() for p in stack.parameters()] == ptrs
    grad = stack.fwd[0].weight_hh_l0.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def _train_lm_on_gpu(mixed_precision, steps=40, grad_scaler=None):
    from thinc.api import Adam, fix_random_seed, require_gpu

    from .test_language_model import make_lm, stream_corpus

    require_gpu(0)
    fix_random_seed(0)
    nlp, lm = make_lm(mixed_precision=mixed_precision, tied=True, hidden_width=16)
    if grad_scaler is not None:
        lm.model.shims[0]._grad_scaler = grad_scaler
    nlp.initialize(lambda: stream_corpus()(nlp))
    optimizer = Adam(0.01)
    history = []
    for _ in range(steps):
        losses = {}
        examples = list(stream_corpus()(nlp))
        for i in range(0, len(examples), 4):
            nlp.update(examples[i : i + 4], sgd=optimizer, losses=losses)
        history.append(losses["rnn_lm"])
    return nlp, lm, history


def test_lm_mixed_precision_trains_in_float16_with_loss_scaling():
    from .test_language_model import dev_examples

    nlp, lm, history = _train_lm_on_gpu(True)
    shim = lm.model.shims[0]
    assert shim._grad_scaler._enabled
    assert float(shim._grad_scaler._scale) > 1
    seen = []
    hook = lm.module.fwd.fwd[0].register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    nlp("the cat sat")
    hook.remove()
    assert seen == [torch.float16]
    assert all(p.dtype == torch.float32 for p in lm.module.parameters())
    assert history[-1] < history[0] / 3
    assert nlp.evaluate(dev_examples(nlp))["lm_ppl"] < 1.8


def test_lm_mixed_precision_skips_overflowing_steps():
    from thinc.api import PyTorchGradScaler

    scaler = PyTorchGradScaler(enabled=True, init_scale=2.0 ** 100, growth_interval=1000)
    scaler.to_(torch.device("cuda"))
    nlp, lm, history = _train_lm_on_gpu(True, steps=3, grad_scaler=scaler)
    # Each overflow halves the scale and skips the step instead of writing
    # inf into the weights.
    assert float(scaler._scale) < 2.0 ** 100
    assert all(torch.isfinite(p).all() for p in lm.module.parameters())


def test_lm_trained_on_gpu_scores_the_same_on_cpu(tmp_path):
    nlp, lm, _ = _train_lm_on_gpu(False, steps=5)
    texts = ["the cat sat on the mat", "a dog"]
    gpu_scores = [d._.lm_logprob for d in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "lm")
    cpu_scores = _scores_in_a_cpu_process(tmp_path / "lm", texts, "d._.lm_logprob")
    assert numpy.allclose(gpu_scores, cpu_scores, atol=1e-3)


def test_listeners_train_on_gpu_with_cudnn_weights_kept_in_place():
    # spaCy steps the tok2vec before its listeners backpropagate; on CUDA
    # the in-place step must neither break that backward pass nor move the
    # cuDNN weight buffer.
    import spacy
    from thinc.api import Adam, require_gpu, set_gpu_allocator

    from spacy_rnn.callbacks import find_rnn_encoders

    from .test_listeners import _config, _examples, _scores, _train

    set_gpu_allocator("pytorch")
    require_gpu(0)
    nlp = spacy.util.load_model_from_config(_config(), auto_fill=True, validate=True)
    examples = _examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    (encoder,) = find_rnn_encoders(nlp, "tok2vec")
    pointers = [p.data_ptr() for p in encoder.parameters()]
    _train(nlp, examples, optimizer, 25)
    assert [p.data_ptr() for p in encoder.parameters()] == pointers
    assert _scores(nlp, examples)["tag_acc"] >= 0.9


def test_host_transfers_keep_their_values_without_draining_the_gpu():
    from spacy_rnn.torch_modules.transfer import HostScalar, to_device

    # The host array may change (or be freed) as soon as to_device returns:
    # it was staged in pinned memory.
    a = numpy.arange(100000, dtype="int64")
    t = to_device(a, "cuda")
    a[:] = -1
    assert t.cpu().numpy().tolist() == list(range(100000))
    # A reading is the value when it was queued, not after later kernels.
    y = torch.ones(1 << 20, device="cuda")
    reading = HostScalar(y.sum())
    for _ in range(50):
        y.mul_(2.0)
    assert float(reading) == float(1 << 20)
    assert float(y[0]) == 2.0 ** 50
    # ready() never waits; once the device has caught up it says so.
    late = HostScalar(y.sum())
    late.ready()
    torch.cuda.synchronize()
    assert late.ready() and float(late) == float(1 << 20) * 2.0 ** 50


def test_global_norm_clipping_on_the_gpu_matches_the_host():
    from thinc.api import PyTorchWrapper_v2, fix_random_seed

    from spacy_rnn.optimization.global_norm import clip_global_norm_async

    # Torch parameters on the GPU: the norm and the scaling are computed
    # there, and agree with the same arithmetic on the host.
    fix_random_seed(0)
    module = torch.nn.LSTM(8, 16).cuda()
    wrapped = PyTorchWrapper_v2(module)
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    host = [p.grad.cpu().clone() for p in module.parameters()]
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in host])))
    reading = clip_global_norm_async(wrapped, norm / 3)
    assert float(reading) == pytest.approx(norm, rel=1e-5)
    for p, g in zip(module.parameters(), host):
        assert torch.allclose(p.grad.cpu(), g / 3, rtol=1e-4, atol=1e-7)


def _train_lm_with_graphs(cuda_graphs, dropout, epochs, depth=2, cell="lstm"):
    from thinc.api import Adam, fix_random_seed, require_gpu

    from .test_language_model import make_lm, stream_corpus, train_batches

    require_gpu(0)
    fix_random_seed(0)
    nlp, lm = make_lm(
        cuda_graphs=cuda_graphs, dropout=dropout, depth=depth, cell=cell, tied=True
    )
    nlp.initialize(lambda: stream_corpus()(nlp))
    optimizer = Adam(0.01)
    per_batch = sum(train_batches(nlp, epochs, optimizer), [])
    return nlp, lm, optimizer, per_batch


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lm_cuda_graph_training_matches_eager(cell, recwarn):
    # Without dropout the replayed windows compute what the eager ones do:
    # the same losses batch by batch, the same weights at the end.
    _, eager, _, eager_losses = _train_lm_with_graphs(False, 0.0, 3, cell=cell)
    _, graphed, _, graph_losses = _train_lm_with_graphs(True, 0.0, 3, cell=cell)
    assert not graphed._graphs.disabled
    assert len(graphed._graphs._graphs) >= 1
    assert not [w for w in recwarn.list if "as a CUDA graph failed" in str(w.message)]
    assert numpy.allclose(eager_losses, graph_losses, rtol=1e-4, atol=1e-6)
    for a, b in zip(eager.module.parameters(), graphed.module.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_lm_cuda_graph_training_learns_with_dropout():
    from .test_language_model import dev_examples

    nlp, lm, _, per_batch = _train_lm_with_graphs(True, 0.2, 40)
    assert len(lm._graphs._graphs) >= 1 and not lm._graphs.disabled
    assert numpy.mean(per_batch[-5:]) < numpy.mean(per_batch[:5]) / 2
    assert nlp.evaluate(dev_examples(nlp))["lm_ppl"] < 2.5


def test_lm_cuda_graph_gradients_accumulate_across_updates():
    # Two updates before one optimiser step (spaCy's accumulate_gradient):
    # the graph's gradient storage must not overwrite what the first left.
    from .test_language_model import stream_corpus

    grads = {}
    for cuda_graphs in (False, True):
        nlp, lm, optimizer, _ = _train_lm_with_graphs(cuda_graphs, 0.0, 1)
        examples = list(stream_corpus()(nlp))
        # Continue the stream where the epoch's batches are full and equal.
        lm.update(examples[0:4], sgd=optimizer)
        lm.update(examples[4:8], sgd=optimizer)
        lm.update(examples[8:12], sgd=optimizer)
        lm.update(examples[12:16])
        lm.update(examples[16:20])
        grads[cuda_graphs] = [p.grad.clone() for p in lm.module.parameters()]
        if cuda_graphs:
            assert len(lm._graphs._graphs) == 1
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lm_cuda_graph_evaluation_matches_eager():
    from .test_language_model import STREAM

    _, lm, _, _ = _train_lm_with_graphs(False, 0.2, 2)
    tokens = STREAM.read_text(encoding="utf8").split()
    lm.cfg["cuda_graphs"] = False
    eager = lm.evaluate_stream(tokens, batch_size=2)
    lm.cfg["cuda_graphs"] = True
    first = lm.evaluate_stream(tokens, batch_size=2)
    again = lm.evaluate_stream(tokens, batch_size=2)
    assert any(key[0] == "eval" for key in lm._graphs._graphs)
    assert not lm._graphs.disabled
    for scores in (first, again):
        assert scores["tokens"] == eager["tokens"]
        assert scores["nll"] == pytest.approx(eager["nll"], rel=1e-5)


def test_lm_cuda_graph_evaluation_through_spacy_matches_eager():
    # nlp.evaluate on a stream dev corpus goes through predict: full windows
    # are replayed there too, and the perplexity is the eager one.
    from .test_language_model import dev_examples

    nlp, lm, _, _ = _train_lm_with_graphs(False, 0.2, 2)
    lm.cfg["cuda_graphs"] = False
    eager = nlp.evaluate(dev_examples(nlp))["lm_ppl"]
    lm.cfg["cuda_graphs"] = True
    for _ in range(2):
        assert nlp.evaluate(dev_examples(nlp))["lm_ppl"] == pytest.approx(eager, rel=1e-5)
    assert any(key[0] == "eval" for key in lm._graphs._graphs)


def test_lm_with_cuda_graphs_deep_copies_and_the_copy_trains():
    import copy

    from thinc.api import Adam

    from .test_language_model import stream_corpus

    nlp, lm, _, _ = _train_lm_with_graphs(True, 0.0, 2)
    assert lm._graphs._graphs
    clone = copy.deepcopy(nlp)
    clone_lm = clone.get_pipe("rnn_lm")
    assert not clone_lm._graphs._graphs
    optimizer = Adam(0.01)
    examples = list(stream_corpus()(clone))
    for i in range(0, 16, 4):
        clone.update(examples[i : i + 4], sgd=optimizer)
    assert clone_lm._graphs._graphs and not clone_lm._graphs.disabled
    for a, b in zip(lm.module.parameters(), clone_lm.module.parameters()):
        assert a.data_ptr() != b.data_ptr()

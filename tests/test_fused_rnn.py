"""The CPU GRU and Elman RNN loops with hand-written backward passes
against nn.GRU and nn.RNN, alone and inside RNNStack."""
import pytest
import torch
from torch import nn

from spacy_rnn.torch_modules import fused_elman as fused_elman_module
from spacy_rnn.torch_modules import fused_gru as fused_gru_module
from spacy_rnn.torch_modules import rnn_stack
from spacy_rnn.torch_modules.cpu_loop import StepLayout, cpu_autocast_enabled
from spacy_rnn.torch_modules.fused_elman import (
    _FusedElman,
    fused_elman_applies,
    fused_elman_directions,
)
from spacy_rnn.torch_modules.fused_gru import (
    _FusedGRU,
    fused_gru,
    fused_gru_applies,
    fused_gru_directions,
)
from spacy_rnn.torch_modules.rnn_stack import RNNStack

TOLERANCE = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-6, 5e-5)}


def _loss_and_grads(outputs, states, weights_y, weights_h, inputs):
    loss = sum((Y * w).sum() for Y, w in zip(outputs, weights_y))
    loss = loss + sum((h * v).sum() for h, v in zip(states, weights_h))
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(
        torch.autograd.grad(loss, inputs, allow_unused=True), inputs
    )]


def _check_against_modules(modules, run, shape, dtype):
    """``run(Xs, h0s)`` gives the modules' outputs, final states and
    gradients (inputs, initial state, weights) within the dtype's tolerance.
    The first module starts from a given state (as in stream mode), any
    second from zeros."""
    B, T, I, H = shape
    n = len(modules)
    Xs = [torch.randn(B, T, I, dtype=dtype, requires_grad=True) for _ in range(n)]
    h0s = [torch.randn(1, B, H, dtype=dtype, requires_grad=True)] + [None] * (n - 1)
    w_y = [torch.randn(B, T, H, dtype=dtype) for _ in range(n)]
    w_h = [torch.randn(1, B, H, dtype=dtype) for _ in range(n)]
    inputs = Xs + [h0s[0]] + [p for m in modules for p in m.parameters()]
    expected = [m(X, h0) for m, X, h0 in zip(modules, Xs, h0s)]
    grads_expected = _loss_and_grads(
        [y for y, _ in expected], [h for _, h in expected], w_y, w_h, inputs
    )
    Ys, hs = run(Xs, h0s)
    grads = _loss_and_grads(Ys, hs, w_y, w_h, inputs)
    atol_y, atol_g = TOLERANCE[dtype]
    for (y_exp, h_exp), y, h in zip(expected, Ys, hs):
        assert y.shape == y_exp.shape and h.shape == h_exp.shape
        assert torch.allclose(y, y_exp, atol=atol_y, rtol=0)
        assert torch.allclose(h, h_exp, atol=atol_y, rtol=0)
    for g, g_exp in zip(grads, grads_expected):
        assert torch.allclose(g, g_exp, atol=atol_g, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 1, 3, 2), (8, 40, 16, 12)])
@pytest.mark.parametrize("n_dirs", [1, 2])
def test_outputs_and_gradients_match_nn_gru(dtype, shape, n_dirs):
    B, T, I, H = shape
    torch.manual_seed(sum(shape) + n_dirs)
    grus = [nn.GRU(I, H, batch_first=True).to(dtype) for _ in range(n_dirs)]

    def run(Xs, h0s):
        if n_dirs == 1:
            Y, h = fused_gru(Xs[0], h0s[0], grus[0]._flat_weights)
            return [Y], [h]
        return fused_gru_directions(Xs, h0s, [g._flat_weights for g in grus])

    _check_against_modules(grus, run, (B, T, I, H), dtype)


def test_step_layout_segments_blocks_and_rows():
    layout = StepLayout([3, 3, 2, 1, 1], 2)
    assert layout.N == 10
    assert layout.segments == [(0, 2, 3), (2, 3, 2), (3, 5, 1)]
    assert layout.blocks(1) == [(0, 2), (2, 3), (3, 5)]
    assert layout.blocks(7) == [(0, 3), (3, 5)]
    assert layout.blocks(100) == [(0, 5)]
    # Step layout: each step's rows are one (K, n_t) block, direction-major.
    assert layout.step_rows().tolist() == [
        [0, 1, 2, 6, 7, 8, 12, 13, 16, 18],
        [3, 4, 5, 9, 10, 11, 14, 15, 17, 19],
    ]
    step = torch.arange(20.0).unsqueeze(1)
    assert layout.to_packed(step)[:, :, 0].tolist() == layout.step_rows().tolist()
    with pytest.raises(ValueError, match="non-increasing"):
        StepLayout([2, 3], 1)
    with pytest.raises(ValueError, match="positive"):
        StepLayout([2, 0], 1)


# Uniform (a padded batch) and ragged: sequences of 6, 4, 4 and 1 steps.
LAYOUTS = [[3] * 6, [3, 3, 3, 3, 1, 1]]


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_gradcheck_two_directions(sizes):
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, batch_first=True).double()
    layout = StepLayout(sizes, 2)
    X = torch.randn(2, layout.N, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, sizes[0], 4, dtype=torch.float64, requires_grad=True)
    weights = tuple(
        torch.stack([p.detach(), p.detach() * 0.5]).requires_grad_()
        for p in gru._flat_weights
    )
    assert torch.autograd.gradcheck(
        lambda X, h0, *w: _FusedGRU.apply(X, h0, *w, layout, True), (X, h0) + weights
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("n_dirs", [1, 2])
def test_elman_outputs_and_gradients_match_nn_rnn(dtype, nonlinearity, n_dirs):
    torch.manual_seed(n_dirs)
    rnns = [
        nn.RNN(7, 9, nonlinearity=nonlinearity, batch_first=True).to(dtype)
        for _ in range(n_dirs)
    ]

    def run(Xs, h0s):
        weights = [r._flat_weights for r in rnns]
        return fused_elman_directions(Xs, h0s, weights, nonlinearity=nonlinearity)

    _check_against_modules(rnns, run, (5, 30, 7, 9), dtype)


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_elman_gradcheck_two_directions(sizes):
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, batch_first=True).double()
    layout = StepLayout(sizes, 2)
    X = torch.randn(2, layout.N, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, sizes[0], 4, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh, b_ih, b_hh = rnn._flat_weights
    weights = tuple(
        torch.stack([p.detach(), p.detach() * 0.5]).requires_grad_()
        for p in (w_ih, w_hh, b_ih + b_hh)
    )
    assert torch.autograd.gradcheck(
        lambda X, h0, *w: _FusedElman.apply(X, h0, *w, False, layout), (X, h0) + weights
    )


def test_elman_refuses_unknown_nonlinearity():
    rnn = nn.RNN(3, 4, batch_first=True)
    with pytest.raises(ValueError, match="nonlinearity 'gelu'"):
        fused_elman_directions([torch.randn(1, 2, 3)], [None], [rnn._flat_weights], "gelu")


def test_inference_matches_without_saving():
    torch.manual_seed(0)
    grus = [nn.GRU(5, 4, batch_first=True) for _ in range(2)]
    Xs = [torch.randn(3, 9, 5) for _ in range(2)]
    with torch.no_grad():
        Ys, hs = fused_gru_directions(Xs, [None, None], [g._flat_weights for g in grus])
        for g, X, Y, h in zip(grus, Xs, Ys, hs):
            Y_exp, h_exp = g(X)
            assert torch.allclose(Y, Y_exp, atol=1e-6)
            assert torch.allclose(h, h_exp, atol=1e-6)
    assert not Ys[0].requires_grad


def test_zero_length_input():
    gru = nn.GRU(3, 4, batch_first=True)
    h0 = torch.randn(1, 2, 4)
    Y, h = fused_gru(torch.zeros(2, 0, 3), h0, gru._flat_weights)
    assert Y.shape == (2, 0, 4)
    assert torch.equal(h, h0)


def test_applies_only_where_it_can():
    X = torch.randn(2, 3, 4)
    assert fused_gru_applies(nn.GRU(4, 5, batch_first=True), X)
    assert not fused_gru_applies(nn.LSTM(4, 5, batch_first=True), X)
    assert not fused_gru_applies(nn.GRU(4, 5, batch_first=False), X)
    assert not fused_gru_applies(nn.GRU(4, 5, num_layers=2, batch_first=True), X)
    assert not fused_gru_applies(nn.GRU(4, 5, bidirectional=True, batch_first=True), X)
    assert not fused_gru_applies(nn.GRU(4, 5, bias=False, batch_first=True), X)
    assert not fused_gru_applies(nn.GRU(4, 5, batch_first=True), X.half())
    packed = nn.utils.rnn.pack_padded_sequence(X, [3, 2], batch_first=True)
    assert not fused_gru_applies(nn.GRU(4, 5, batch_first=True), packed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_gru_applies(nn.GRU(4, 5, batch_first=True), X)
        assert not fused_elman_applies(nn.RNN(4, 5, batch_first=True), X)
    assert fused_elman_applies(nn.RNN(4, 5, nonlinearity="relu", batch_first=True), X)
    assert not fused_elman_applies(nn.GRU(4, 5, batch_first=True), X)
    assert not fused_elman_applies(nn.RNN(4, 5, num_layers=2, batch_first=True), X)


def test_cpu_autocast_check_works_before_torch_2_4(monkeypatch):
    # Before PyTorch 2.4 is_autocast_enabled took no device type.
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda: False)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: True)
    assert cpu_autocast_enabled() is True


def _pair(cell="gru", **kwargs):
    torch.manual_seed(0)
    fused = RNNStack(6, 8, cell=cell, **kwargs)
    plain = RNNStack(6, 8, cell=cell, **kwargs)
    plain.load_state_dict(fused.state_dict())
    plain.fused_cpu_kernels = False
    return fused, plain


def _train_and_infer(module, flat, lengths, target):
    """One training pass with a weighted-sum loss, then inference: the
    outputs, the inference outputs, the input's and the parameters'
    gradients."""
    module.train()
    x = flat.clone().requires_grad_()
    out = module(x, lengths)
    (out * target).sum().backward()
    with torch.no_grad():
        inferred = module.eval()(flat, lengths)
    return out.detach(), inferred, x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("depth", [1, 2])
def test_rnn_stack_training_matches_torch_modules(cell, bidirectional, depth):
    fused, plain = _pair(cell, bidirectional=bidirectional, depth=depth, residual=True)
    lengths = [7, 0, 1, 12, 3, 3]
    flat = torch.randn(sum(lengths), 6)
    target = torch.randn(sum(lengths), 8)
    (out_f, _, dx_f, dp_f), (out_p, _, dx_p, dp_p) = [
        _train_and_infer(module, flat, lengths, target) for module in (fused, plain)
    ]
    assert torch.allclose(out_f, out_p, atol=1e-6)
    assert torch.allclose(dx_f, dx_p, atol=1e-5)
    for a, b in zip(dp_f, dp_p):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("block_rows", [4096, 7])
def test_ragged_loop_matches_torch_modules_on_many_lengths(
    cell, bidirectional, block_rows, monkeypatch
):
    # Twenty sequences of 1-40 steps, ties included: the ragged loop's
    # batch shrinks at every distinct length. Float64, so that any row
    # read from the wrong step or sequence shows. With 7 rows per block the
    # input projection runs block by block, and inference runs in groups of
    # sequences of about 60 rows.
    for module in (fused_gru_module, fused_elman_module):
        monkeypatch.setattr(module, "PROJECTION_BLOCK_ROWS", block_rows)
    if block_rows < 100:
        monkeypatch.setattr(rnn_stack, "INFERENCE_GROUP_ROWS", 60)
    torch.manual_seed(3)
    fused, plain = _pair(cell, bidirectional=bidirectional, depth=2, layer_norm=True, residual=True)
    fused.double()
    plain.double()
    lengths = torch.randint(1, 41, (20,)).tolist() + [17, 17, 0]
    flat = torch.randn(sum(lengths), 6, dtype=torch.float64)
    target = torch.randn(sum(lengths), 8, dtype=torch.float64)
    results = [_train_and_infer(module, flat, lengths, target) for module in (fused, plain)]
    for a, b in zip(results[0][:3], results[1][:3]):
        assert torch.allclose(a, b, atol=1e-10)
    for a, b in zip(results[0][3], results[1][3]):
        assert torch.allclose(a, b, atol=1e-9)
    # Each sequence alone gives the same rows as in the batch.
    starts = [0] + torch.tensor(lengths).cumsum(0).tolist()
    with torch.no_grad():
        for j in (0, 5, 21):
            alone = fused(flat[starts[j] : starts[j + 1]], [lengths[j]])
            assert torch.allclose(alone, results[0][1][starts[j] : starts[j + 1]], atol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_rnn_stack_weight_drop_draws_the_same_masks(cell):
    # The fused path drops each direction's recurrent matrix in the same
    # order as PyTorch's path, so a seed gives the same masks and outputs.
    # (Dropout on activations draws its masks in another shape there: the
    # fused path's rows are not padded.)
    fused, plain = _pair(cell, bidirectional=True, depth=2, weight_drop=0.5)
    lengths = [5, 9, 2]
    flat = torch.randn(sum(lengths), 6)
    outs = []
    for module in (fused, plain):
        module.train()
        torch.manual_seed(7)
        out = module(flat, lengths)
        out.sum().backward()
        outs.append((out.detach(), module.fwd[0].weight_hh_l0.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-4)
    # Dropped weights are a copy: the parameters never change in place.
    assert torch.equal(fused.fwd[0].weight_hh_l0, plain.fwd[0].weight_hh_l0)


def test_rnn_stack_uses_the_fused_loop_where_it_should(monkeypatch):
    calls = []
    real_padded = rnn_stack.fused_gru_directions
    real_ragged = rnn_stack.fused_gru_ragged

    def counting_padded(Xs, h0s, weights):
        calls.append(("padded", len(Xs)))
        return real_padded(Xs, h0s, weights)

    def counting_ragged(X, weights, layout):
        calls.append(("ragged", len(weights)))
        return real_ragged(X, weights, layout)

    monkeypatch.setattr(rnn_stack, "fused_gru_directions", counting_padded)
    monkeypatch.setattr(rnn_stack, "fused_gru_ragged", counting_ragged)
    lengths = [4, 2]
    flat = torch.randn(6, 6)
    bi, _ = _pair(bidirectional=True)
    uni, _ = _pair(bidirectional=False)
    bi.train()(flat, lengths)
    uni.train()(flat, lengths)
    # A batch of any lengths runs one ragged loop per layer.
    assert calls == [("ragged", 2), ("ragged", 1)]
    calls.clear()
    # Inference: the ragged loop for one direction too (it beats nn.GRU's
    # C++ loop there, where a padded fused call did not).
    with torch.no_grad():
        bi.eval()(flat, lengths)
        uni.eval()(flat, lengths)
        assert calls == [("ragged", 2), ("ragged", 1)]
        calls.clear()
        # Sequences long enough to be encoded in chunks keep the chunked
        # path, one direction at a time, on nn.GRU.
        bi.inference_chunk = 3
        bi(flat, lengths)
        assert calls == []
    # With ragged_cpu_loop off, the same loop runs once per length bucket.
    bi.ragged_cpu_loop = False
    bi.train()(flat, lengths)
    assert calls == [("padded", 2)]
    calls.clear()
    # Stream mode (language models) runs the padded loop in training, and
    # nn.GRU for one direction in inference.
    uni.train().forward_stream(torch.randn(2, 5, 6))
    assert calls == [("padded", 1)]
    calls.clear()
    with torch.no_grad():
        uni.eval().forward_stream(torch.randn(2, 5, 6))
    assert calls == []
    # Per bucket (ragged_cpu_loop off), one direction in inference keeps
    # nn.GRU, as before session 14.
    uni.ragged_cpu_loop = False
    with torch.no_grad():
        uni(flat, lengths)
    assert calls == []
    bi.fused_cpu_kernels = False
    uni.fused_cpu_kernels = False
    bi.train()(flat, lengths)
    uni.train()(flat, lengths)
    assert calls == []
    # LSTMs and packed sequences keep PyTorch's kernels; Elman RNNs have
    # their own loop.
    RNNStack(6, 8, cell="rnn_tanh").train()(flat, lengths)
    RNNStack(6, 8, cell="lstm").train()(flat, lengths)
    RNNStack(6, 8, cell="gru", method="packed").train()(flat, lengths)
    assert calls == []


@pytest.mark.parametrize("cell", ["gru", "rnn_relu"])
def test_stream_mode_carries_state_through_the_fused_loop(cell):
    fused, plain = _pair(cell, bidirectional=False, depth=2)
    X = torch.randn(3, 10, 6)
    for module in (fused, plain):
        module.train()
    y_f, state_f = fused.forward_stream(X[:, :4])
    y_p, state_p = plain.forward_stream(X[:, :4])
    y_f2, _ = fused.forward_stream(X[:, 4:], [s.detach() for s in state_f])
    y_p2, _ = plain.forward_stream(X[:, 4:], [s.detach() for s in state_p])
    assert torch.allclose(y_f, y_p, atol=1e-6)
    assert torch.allclose(y_f2, y_p2, atol=1e-6)
    for a, b in zip(state_f, state_p):
        assert a.shape == b.shape == (1, 3, 8)
        assert torch.allclose(a, b, atol=1e-6)


def test_gru_stack_learns_to_count():
    # Loss goes down and the task is learnt: after training, the last
    # output of each sequence tells sequences with more ones than zeros.
    torch.manual_seed(0)
    module = RNNStack(2, 16, cell="gru", bidirectional=True)
    head = nn.Linear(16, 2)
    optimizer = torch.optim.Adam(list(module.parameters()) + list(head.parameters()), lr=0.02)

    def batch(n):
        lengths = torch.randint(3, 12, (n,)).tolist()
        bits = [torch.randint(0, 2, (length,)) for length in lengths]
        flat = torch.cat([nn.functional.one_hot(b, 2).float() for b in bits])
        labels = torch.tensor([int(b.sum() * 2 > len(b)) for b in bits])
        return flat, lengths, labels

    def logits(flat, lengths):
        out = module(flat, lengths)
        ends = torch.tensor(lengths).cumsum(0) - 1
        starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
        pooled = torch.cat([out[ends, :8], out[starts, 8:]], dim=-1)
        return head(pooled)

    losses = []
    for _ in range(150):
        flat, lengths, labels = batch(32)
        loss = nn.functional.cross_entropy(logits(flat, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    module.eval()
    with torch.no_grad():
        flat, lengths, labels = batch(200)
        accuracy = (logits(flat, lengths).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.9

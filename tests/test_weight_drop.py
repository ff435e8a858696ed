"""DropConnect on the recurrent weights: exact against a reference, and the
weight list handed to the kernel keeps a cuDNN-style single-buffer layout.

On CPU torch keeps an RNN's weights in separate tensors; the tests below
flatten a module by hand the way ``flatten_parameters`` does on CUDA to
check the layout logic. The cuDNN run itself is in test_gpu.py.
"""
import pytest
import torch
from torch import nn

from spacy_rnn.torch_modules.rnn_stack import RNNStack, dropconnect_weights


def _reference_call(rnn, X, hx, rate):
    # What a weight-dropped call computes, written the plain way.
    dropped = nn.functional.dropout(rnn.weight_hh_l0, p=rate, training=True)
    return torch.func.functional_call(rnn, {"weight_hh_l0": dropped}, (X, hx))


def _flatten_by_hand(rnn, pad=7):
    # One buffer, weights back to back in _flat_weights order, plus slack at
    # the end (cuDNN's buffer may be larger than the weights).
    weights = rnn._flat_weights
    buffer = torch.cat([w.detach().reshape(-1) for w in weights] + [torch.zeros(pad)])
    start = 0
    for name, w in zip(list(rnn._flat_weights_names), list(weights)):
        view = buffer[start : start + w.numel()].view(w.shape)
        setattr(rnn, name, nn.Parameter(view))
        start += w.numel()
    return buffer


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("flattened", [False, True])
def test_dropped_call_matches_reference(cell, flattened):
    torch.manual_seed(0)
    stack = RNNStack(5, 6, bidirectional=False, cell=cell, weight_drop=0.4).train()
    rnn = stack.fwd[0]
    if flattened:
        _flatten_by_hand(rnn)
    params = dict(rnn.named_parameters())
    X = torch.randn(3, 7, 5)
    torch.manual_seed(1)
    Y, _ = stack._call_rnn(rnn, X)
    Y.pow(2).sum().backward()
    grads = {k: p.grad.clone() for k, p in params.items()}
    for p in params.values():
        p.grad = None
    # The module is left exactly as it was: same parameter objects, and
    # the kernel's weight list points at them again.
    assert dict(rnn.named_parameters()) == params
    assert all(a is b for a, b in zip(rnn._flat_weights, params.values()))
    torch.manual_seed(1)
    Y_ref, _ = _reference_call(rnn, X, None, 0.4)
    Y_ref.pow(2).sum().backward()
    assert torch.allclose(Y, Y_ref, atol=1e-6)
    for k, p in params.items():
        assert torch.allclose(grads[k], p.grad, atol=1e-5), k


def test_flattened_weights_keep_one_buffer_with_the_same_layout():
    torch.manual_seed(0)
    rnn = nn.LSTM(5, 6, 1, batch_first=True)
    buffer = _flatten_by_hand(rnn)
    originals = list(rnn._flat_weights)
    weights = dropconnect_weights(rnn, 0.5)
    storage = weights[0].untyped_storage()
    assert storage.nbytes() == buffer.untyped_storage().nbytes()
    for w, o, name in zip(weights, originals, rnn._flat_weights_names):
        assert w.untyped_storage().data_ptr() == storage.data_ptr()
        assert w.storage_offset() == o.storage_offset()
        assert w.shape == o.shape and w.is_contiguous()
        if name == "weight_hh_l0":
            kept = w != 0
            assert 0 < int(kept.sum()) < w.numel()
            assert torch.allclose(w[kept], o[kept] * 2)
        else:
            assert torch.equal(w, o)
    # The originals were not touched.
    assert torch.equal(torch.cat([o.reshape(-1) for o in originals]), buffer[: -7])


def test_separate_weights_stay_separate():
    rnn = nn.GRU(4, 3, 1, batch_first=True)
    weights = dropconnect_weights(rnn, 0.5)
    assert weights[0] is rnn.weight_ih_l0
    assert weights[2] is rnn.bias_ih_l0


def test_weight_list_restored_when_the_call_fails():
    stack = RNNStack(5, 6, bidirectional=False, weight_drop=0.4).train()
    rnn = stack.fwd[0]
    before = list(rnn._flat_weights)
    with pytest.raises(RuntimeError):
        stack._call_rnn(rnn, torch.randn(2, 3, 9))  # wrong input width
    assert all(a is b for a, b in zip(rnn._flat_weights, before))


def test_bucketed_training_with_weight_drop_backpropagates():
    # Several kernel calls per module in one forward pass (length buckets):
    # no call may disturb what an earlier one saved for backward.
    torch.manual_seed(0)
    stack = RNNStack(4, 8, depth=2, weight_drop=0.3, method="reverse").train()
    lengths = [30, 29, 12, 11, 3, 2, 1]
    X = torch.randn(sum(lengths), 4, requires_grad=True)
    Y = stack(X, lengths)
    Y.sum().backward()
    assert X.grad is not None and torch.isfinite(X.grad).all()
    assert all(p.grad is not None for p in stack.parameters())

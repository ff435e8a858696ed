import itertools

import numpy
import pytest
import torch

from spacy_rnn.torch_modules.rnn_stack import CELLS, RNNStack, plan_buckets


def _alone_vs_batched(module, lengths, width):
    torch.manual_seed(1)
    flat = torch.randn(sum(lengths), width)
    batched = module(flat, lengths)
    diffs = []
    start = 0
    for n in lengths:
        alone = module(flat[start : start + n], [n])
        if n:
            diffs.append((alone - batched[start : start + n]).abs().max().item())
        start += n
    return batched, max(diffs)


@pytest.mark.parametrize(
    "cell,bidirectional,depth,residual,layer_norm,method",
    [
        (c, b, d, r, ln, m)
        for c, b, (d, r, ln), m in itertools.product(
            CELLS, [True, False], [(1, False, False), (2, True, True)], ["reverse", "packed"]
        )
    ],
)
def test_shapes_and_batch_independence(cell, bidirectional, depth, residual, layer_norm, method):
    module = RNNStack(
        8, 6, depth=depth, cell=cell, bidirectional=bidirectional,
        residual=residual, layer_norm=layer_norm, method=method,
    ).eval()
    lengths = [7, 0, 1, 12, 3, 3]
    out, max_diff = _alone_vs_batched(module, lengths, 8)
    assert out.shape == (sum(lengths), 6)
    assert max_diff < 1e-5


def test_backward_direction_ignores_padding():
    # Changing a long doc must not change a short doc's outputs in either
    # direction: the short doc is padded up to the long one's length.
    module = RNNStack(4, 8, bidirectional=True).eval()
    short = torch.randn(3, 4)
    long_a, long_b = torch.randn(20, 4), torch.randn(20, 4)
    out_a = module(torch.cat([long_a, short]), [20, 3])[20:]
    out_b = module(torch.cat([long_b, short]), [20, 3])[20:]
    assert torch.allclose(out_a, out_b, atol=1e-6)


def test_reverse_and_packed_agree():
    torch.manual_seed(0)
    a = RNNStack(5, 10, depth=2, method="reverse").eval()
    b = RNNStack(5, 10, depth=2, method="packed").eval()
    b.load_state_dict(a.state_dict())
    lengths = [9, 4, 1, 6]
    x = torch.randn(sum(lengths), 5)
    assert torch.allclose(a(x, lengths), b(x, lengths), atol=1e-5)


def test_gradients_reach_inputs_and_weights():
    module = RNNStack(4, 6, depth=2, cell="gru")
    x = torch.randn(10, 4, requires_grad=True)
    module(x, [6, 4]).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.parameters())


def test_stream_mode_carries_state():
    module = RNNStack(4, 6, depth=2, bidirectional=False).eval()
    x = torch.randn(2, 10, 4)
    whole, _ = module.forward_stream(x)
    first, state = module.forward_stream(x[:, :6])
    second, _ = module.forward_stream(x[:, 6:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)
    with pytest.raises(ValueError, match="one-directional"):
        RNNStack(4, 6).forward_stream(x)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"hidden_size": 7, "bidirectional": True}, "must be even"),
        ({"cell": "transformer"}, "Unknown RNN cell"),
        ({"init": "zeros"}, "Unknown init"),
        ({"depth": 0}, "depth"),
        ({"dropout": 1.5}, "dropout"),
        ({"method": "magic"}, "Unknown method"),
    ],
)
def test_bad_settings_refused(kwargs, message):
    settings = {"input_size": 4, "hidden_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        RNNStack(**settings)


def test_orthogonal_init_and_forget_bias():
    module = RNNStack(6, 8, cell="lstm", bidirectional=False, init="orthogonal")
    lstm = module.fwd[0]
    for block in lstm.weight_hh_l0.chunk(4, dim=0):
        eye = block @ block.T
        assert torch.allclose(eye, torch.eye(8), atol=1e-5)
    assert torch.all(lstm.bias_ih_l0[8:16] == 1.0)
    assert torch.all(lstm.bias_hh_l0 == 0.0)


def test_wrong_row_count_is_an_error():
    with pytest.raises(ValueError, match="rows"):
        RNNStack(4, 8)(torch.randn(5, 4), [2, 2])


def test_bucket_plan_covers_everything():
    lengths = numpy.array(sorted(numpy.random.RandomState(0).randint(1, 300, 200), reverse=True))
    buckets = plan_buckets(lengths, 4.0)
    assert buckets[0][0] == 0 and buckets[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))
    padded = sum(lengths[a] * (b - a) for a, b in buckets)
    assert padded < lengths[0] * len(lengths)
    assert plan_buckets(lengths, 0.0) == [(0, len(lengths))]


def test_weight_drop_masks_recurrent_weights_only_in_training():
    torch.manual_seed(0)
    module = RNNStack(4, 6, bidirectional=False, weight_drop=0.5)
    raw = module.fwd[0].weight_hh_l0.detach().clone()
    x = torch.randn(8, 4)
    module.train()
    a, b = module(x, [8]), module(x, [8])
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert module.fwd[0].weight_hh_l0.grad is not None
    assert torch.equal(module.fwd[0].weight_hh_l0.detach(), raw)
    module.eval()
    assert torch.allclose(module(x, [8]), module(x, [8]))
    reference = RNNStack(4, 6, bidirectional=False).eval()
    reference.load_state_dict(module.state_dict())
    assert torch.allclose(module(x, [8]), reference(x, [8]), atol=1e-6)


def test_locked_dropout_uses_one_mask_per_sequence():
    torch.manual_seed(0)
    module = RNNStack(4, 6, bidirectional=False, locked_dropout=True, input_dropout=0.5)
    module.train()
    X = torch.ones(3, 10, 4)
    dropped = module._drop(X, 0.5)
    # Every time step of a sequence sees the same mask.
    assert torch.equal(dropped, dropped[:, :1, :].expand_as(dropped))
    assert (dropped == 0).any() and (dropped == 2).any()
    module.eval()
    assert torch.equal(module._drop(X, 0.5), X)


def test_locked_dropout_on_rows_uses_one_mask_per_sequence():
    # The fused CPU loops' path keeps rows unpadded, as (rows, width) with
    # the sequence of each row: every row of a sequence sees its mask.
    torch.manual_seed(0)
    module = RNNStack(4, 6, bidirectional=False, locked_dropout=True).train()
    lengths = [3, 5, 2]
    row_seq = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    dropped = module._drop(torch.ones(10, 40), 0.5, row_seq)
    masks = [rows for rows in dropped.split(lengths)]
    for rows in masks:
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert not torch.equal(masks[0][0], masks[1][0])
    assert (dropped == 0).any() and (dropped == 2).any()


@pytest.mark.parametrize("rate_name", ["input_dropout", "output_dropout", "weight_drop"])
def test_bad_dropout_rates_refused(rate_name):
    with pytest.raises(ValueError, match=rate_name):
        RNNStack(4, 8, **{rate_name: 1.0})


def test_gathered_rows_backward_matches_indexing():
    # Each real row once, the padding row (last) any number of times: the
    # gradient is the plain indexing one, with nothing for the padding row.
    from spacy_rnn.torch_modules.rnn_stack import _GatherRows

    source = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[4, 0, 2], [1, 5, 5], [3, 5, 5]])
    out = _GatherRows.apply(source, index)
    assert torch.equal(out, source[index])
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out * weights).sum().backward()
    expected = torch.zeros(6, 3, dtype=torch.float64)
    expected.index_put_((index.reshape(-1),), weights.reshape(-1, 3), accumulate=True)
    expected[-1] = 0
    assert torch.equal(source.grad, expected)


def test_training_gradients_match_each_doc_alone():
    # Bucketed, gathered, reordered: the input and weight gradients of a
    # batch are the sums of each doc's own, to float rounding.
    torch.manual_seed(0)
    module = RNNStack(5, 8, depth=2, bucket_overhead=0.0).double()
    lengths = [7, 0, 3, 12, 1, 3]
    x = torch.randn(sum(lengths), 5, dtype=torch.float64)
    dy = torch.randn(sum(lengths), 8, dtype=torch.float64)
    xb = x.clone().requires_grad_(True)
    module(xb, lengths).backward(dy)
    batch_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    start = 0
    dx_alone = torch.zeros_like(x)
    for n in lengths:
        if n:
            xi = x[start : start + n].clone().requires_grad_(True)
            module(xi, [n]).backward(dy[start : start + n])
            dx_alone[start : start + n] = xi.grad
        start += n
    assert torch.allclose(xb.grad, dx_alone, atol=1e-12)
    for batch, alone in zip(batch_grads, module.parameters()):
        assert torch.allclose(batch, alone.grad, atol=1e-10)

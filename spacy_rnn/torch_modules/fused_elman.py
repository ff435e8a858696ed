"""A one-layer Elman RNN (tanh or ReLU) for the CPU whose backward pass is
written by hand.

Plain PyTorch. As for the GRU (``fused_gru.py``), PyTorch has no fused
kernel for ``nn.RNN`` on the CPU: autograd records every op of every time
step. Here the input projection of all steps is one product, each
step is a product and the nonlinearity (two ops), and the backward pass is
two ops per step; the nonlinearity's derivative is computed from the outputs
for all steps at once before the loop. The maths is ``nn.RNN``'s,

    h' = act(W_ih x + b_ih + W_hh h + b_hh),

so weights and outputs are unchanged up to the rounding of sums. Several
same-shaped RNNs (the two directions of a layer) run in one loop.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .cpu_loop import (
    PROJECTION_BLOCK_ROWS,
    HiddenGradients,
    StepLayout,
    cpu_loop_applies,
    previous_states,
    run_ragged,
    run_stacked,
)

__all__ = ["fused_elman_applies", "fused_elman_directions", "fused_elman_ragged"]


def fused_elman_applies(rnn: nn.Module, X) -> bool:
    """Whether ``fused_elman_directions`` can stand in for ``rnn(X)``.

    rnn (nn.Module): The recurrent module about to run.
    X: Its input: a tensor, or a ``PackedSequence`` (never fused).
    RETURNS (bool): True for a plain one-layer, one-directional, batch-first
        ``nn.RNN`` with biases, on a float32 or float64 CPU tensor, outside
        CPU autocast.
    """
    return cpu_loop_applies(rnn, X, nn.RNN) and rnn.nonlinearity in ("tanh", "relu")


def fused_elman_directions(
    Xs: Sequence[torch.Tensor],
    h0s: Sequence[Optional[torch.Tensor]],
    weights: Sequence[Sequence[torch.Tensor]],
    nonlinearity: str = "tanh",
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Run one or more same-shaped Elman RNNs in one loop, each on its own
    input with its own weights.

    Xs (Sequence[torch.Tensor]): (batch, time, input) inputs, same shape.
    h0s (Sequence[Optional[torch.Tensor]]): (1, batch, hidden) initial
        states, or None for zeros.
    weights (Sequence[Sequence[torch.Tensor]]): Each RNN's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    nonlinearity (str): "tanh" or "relu".
    RETURNS (Tuple[List[torch.Tensor], List[torch.Tensor]]): Each RNN's
        (batch, time, hidden) outputs, and its (1, batch, hidden) final state.
    """
    return run_stacked(Xs, h0s, weights, _make_loop(nonlinearity))


def fused_elman_ragged(
    X: torch.Tensor,
    weights: Sequence[Sequence[torch.Tensor]],
    layout: StepLayout,
    nonlinearity: str = "tanh",
) -> torch.Tensor:
    """Run K same-shaped Elman RNNs from zero states over a ragged batch:
    each step computes only the sequences still running.

    X (torch.Tensor): (K, N, input) packed inputs (``StepLayout``).
    weights (Sequence[Sequence[torch.Tensor]]): Each RNN's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    layout (StepLayout): The batch's steps.
    nonlinearity (str): "tanh" or "relu".
    RETURNS (torch.Tensor): (K * N, hidden) outputs in step layout.
    """
    return run_ragged(X, weights, layout, _make_loop(nonlinearity))


def _make_loop(nonlinearity: str):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}: choose tanh or relu")
    relu = nonlinearity == "relu"

    def loop(X, h0, w_ih, w_hh, b_ih, b_hh, layout):
        # Both biases enter every step the same way: add them once.
        return _FusedElman.apply(X, h0, w_ih, w_hh, b_ih + b_hh, relu, layout)

    return loop


class _FusedElman(torch.autograd.Function):
    # K RNNs at once: packed inputs (K, N, I), weights (K, ...); step-layout
    # buffers with per-step views made once per call, as in fused_gru.py.

    @staticmethod
    def forward(ctx, X, h0, w_ih, w_hh, bias, relu, layout):
        K, N, _ = X.shape
        H = w_hh.shape[2]
        n0 = layout.sizes[0]
        HS = X.new_empty((K * n0 + K * N, H))
        HS[: K * n0] = h0.reshape(K * n0, H)
        w_ih_t = w_ih.transpose(1, 2)
        w_hh_t = w_hh.transpose(1, 2)
        bias = bias.unsqueeze(1)
        h = HS[: K * n0].view(K, n0, H)
        step_buffers = list(zip(layout.sizes, layout.step_views(HS[K * n0 :])))
        for t0, t1 in layout.blocks(PROJECTION_BLOCK_ROWS):
            r0, r1 = int(layout.offsets[t0]), int(layout.offsets[t1])
            GI = torch.baddbmm(bias, X[:, r0:r1], w_ih_t)
            for gi, (n, y) in zip(layout.packed_views(GI, t0, t1), step_buffers[t0:t1]):
                if h.shape[1] != n:
                    h = h[:, :n]
                torch.baddbmm(gi, h, w_hh_t, out=y)
                if relu:
                    y.relu_()
                else:
                    y.tanh_()
                h = y
            del GI
        ctx.relu = relu
        ctx.layout = layout
        ctx.save_for_backward(X, w_ih, w_hh, HS)
        return HS[K * n0 :]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY):
        X, w_ih, w_hh, HS = ctx.saved_tensors
        layout = ctx.layout
        K, N, H = layout.K, layout.N, HS.shape[1]
        dY = dY.contiguous()
        Y = HS[K * layout.sizes[0] :]
        # The nonlinearity's derivative from its outputs, for all steps.
        if ctx.relu:
            act = (Y > 0).to(Y.dtype)
        else:
            act = torch.addcmul(torch.ones_like(Y), Y, Y, value=-1.0)
        # Gradient of each step's pre-activation.
        D = X.new_empty((K * N, H))
        grads = HiddenGradients(X, layout, H)
        dY_steps = layout.step_views(dY)
        dh = grads.start(dY_steps[-1])
        steps = zip(
            range(layout.T - 1, -1, -1),
            reversed(layout.step_views(D)),
            reversed(layout.step_views(act)),
        )
        for t, d, a in steps:
            torch.mul(dh, a, out=d)
            nxt, top = grads.next(t, dY_steps[t - 1] if t > 0 else None)
            if top is not nxt:
                # Sequences that end at t - 1 join here with their output's
                # gradient alone.
                top.baddbmm_(d, w_hh)
            elif t > 0:
                torch.baddbmm(dY_steps[t - 1], d, w_hh, out=nxt)
            else:
                torch.bmm(d, w_hh, out=nxt)
            dh = nxt
        d_h0 = dh
        D = layout.to_packed(D)
        dX = dW_ih = dW_hh = d_bias = None
        if ctx.needs_input_grad[0]:
            dX = torch.bmm(D, w_ih)
        if ctx.needs_input_grad[2]:
            dW_ih = torch.bmm(D.transpose(1, 2), X)
        if ctx.needs_input_grad[3]:
            H_prev = layout.to_packed(previous_states(HS, layout))
            dW_hh = torch.bmm(D.transpose(1, 2), H_prev)
        if ctx.needs_input_grad[4]:
            d_bias = D.sum(1)
        return dX, d_h0, dW_ih, dW_hh, d_bias, None, None

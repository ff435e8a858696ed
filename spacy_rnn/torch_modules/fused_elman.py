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

from .cpu_loop import cpu_loop_applies, run_stacked

__all__ = ["fused_elman_applies", "fused_elman_directions"]


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
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}: choose tanh or relu")
    relu = nonlinearity == "relu"

    def loop(X, h0, w_ih, w_hh, b_ih, b_hh):
        # Both biases enter every step the same way: add them once.
        return _FusedElman.apply(X, h0, w_ih, w_hh, b_ih + b_hh, relu)

    return run_stacked(Xs, h0s, weights, loop)


class _FusedElman(torch.autograd.Function):
    # K RNNs at once: inputs (K, B, T, I), weights (K, ...); time-major
    # buffers (T, K, B, H), per-step views made once with unbind(), as in
    # fused_gru.py.

    @staticmethod
    def forward(ctx, X, h0, w_ih, w_hh, bias, relu):
        K, B, T, _ = X.shape
        H = w_hh.shape[2]
        X_tm = X.transpose(1, 2).reshape(K, T * B, -1)
        GI = torch.baddbmm(bias.unsqueeze(1), X_tm, w_ih.transpose(1, 2))
        GI = GI.view(K, T, B, H).transpose(0, 1)
        HS = X.new_empty((T + 1, K, B, H))
        HS[0] = h0
        w_hh_t = w_hh.transpose(1, 2)
        h = HS[0]
        for gi, y in zip(GI.unbind(0), HS[1:].unbind(0)):
            torch.baddbmm(gi, h, w_hh_t, out=y)
            if relu:
                y.relu_()
            else:
                y.tanh_()
            h = y
        ctx.relu = relu
        ctx.save_for_backward(X_tm, w_ih, w_hh, HS)
        return HS[1:].permute(1, 2, 0, 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, dY):
        X_tm, w_ih, w_hh, HS = ctx.saved_tensors
        T, K, B, H = HS.shape[0] - 1, HS.shape[1], HS.shape[2], HS.shape[3]
        dY = dY.permute(2, 0, 1, 3)  # (T, K, B, H)
        Y = HS[1:]
        # The nonlinearity's derivative from its outputs, for all steps.
        if ctx.relu:
            act = (Y > 0).to(Y.dtype)
        else:
            act = torch.addcmul(torch.ones_like(Y), Y, Y, value=-1.0)
        # Gradient of each step's pre-activation.
        D = X_tm.new_empty((T, K, B, H))
        dh_bufs = (X_tm.new_empty((K, B, H)), X_tm.new_empty((K, B, H)))
        dh = dh_bufs[0]
        dh.copy_(dY[T - 1])
        dY_steps = dY.unbind(0)
        for t, d, a in zip(range(T - 1, -1, -1), reversed(D.unbind(0)), reversed(act.unbind(0))):
            torch.mul(dh, a, out=d)
            nxt = dh_bufs[t % 2 == 0]
            if t > 0:
                torch.baddbmm(dY_steps[t - 1], d, w_hh, out=nxt)
            else:
                torch.bmm(d, w_hh, out=nxt)
            dh = nxt
        d_h0 = dh
        D = D.transpose(0, 1).reshape(K, T * B, H)
        dX = dW_ih = dW_hh = d_bias = None
        if ctx.needs_input_grad[0]:
            dX = torch.bmm(D, w_ih).view(K, T, B, -1).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            dW_ih = torch.bmm(D.transpose(1, 2), X_tm)
        if ctx.needs_input_grad[3]:
            H_prev = HS[:-1].transpose(0, 1).reshape(K, T * B, H)
            dW_hh = torch.bmm(D.transpose(1, 2), H_prev)
        if ctx.needs_input_grad[4]:
            d_bias = D.sum(1)
        return dX, d_h0, dW_ih, dW_hh, d_bias, None

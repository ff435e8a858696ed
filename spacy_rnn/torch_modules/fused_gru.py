"""A one-layer GRU for the CPU whose backward pass is written by hand.

Plain PyTorch. On CUDA ``nn.GRU`` runs cuDNN's fused kernels and on the CPU
``nn.LSTM`` runs oneDNN's, but PyTorch has no fused GRU for the CPU: it runs
the cell as separate tensor ops per time step, and autograd records every one
of them and replays a backward node for each: an ``rnn_textcat`` training
step made 265k aten ops with a GRU against 1.4k with the LSTM, and trained at
0.29x of its speed (README, "Fused CPU loops for GRU and Elman layers").

Here the input projection for all time steps is one matrix product, the
recurrence is a loop of six tensor ops per step that write into
preallocated buffers, and the backward pass is a second loop of six ops per
step: the gate derivatives that do not depend on the incoming gradient are
computed for all steps at once before it, and the weight gradients are one
matrix product each after it. The maths is ``nn.GRU``'s (PyTorch's gate
order r, z, n, with ``b_hn`` inside the reset gate's product):

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

so a module's weights, saved pipelines and outputs are unchanged; only the
rounding of sums differs.
"""
import itertools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .cpu_loop import cpu_loop_applies, run_stacked

__all__ = ["fused_gru", "fused_gru_applies", "fused_gru_directions"]


def fused_gru_applies(rnn: nn.Module, X) -> bool:
    """Whether ``fused_gru`` can stand in for ``rnn(X)``.

    rnn (nn.Module): The recurrent module about to run.
    X: Its input: a tensor, or a ``PackedSequence`` (never fused).
    RETURNS (bool): True for a plain one-layer, one-directional, batch-first
        ``nn.GRU`` with biases, on a float32 or float64 CPU tensor, outside
        CPU autocast. Everything else keeps PyTorch's own kernel.
    """
    return cpu_loop_applies(rnn, X, nn.GRU)


def fused_gru(
    X: torch.Tensor,
    h0: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run a one-layer GRU over a batch-first tensor, as ``nn.GRU`` does.

    X (torch.Tensor): (batch, time, input) input.
    h0 (Optional[torch.Tensor]): (1, batch, hidden) initial state, or None
        for zeros.
    weights (Sequence[torch.Tensor]): ``weight_ih``, ``weight_hh``,
        ``bias_ih``, ``bias_hh`` in ``nn.GRU``'s layout (its
        ``_flat_weights`` order).
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): (batch, time, hidden)
        outputs and the (1, batch, hidden) final state.
    """
    (Y,), (h_n,) = fused_gru_directions([X], [h0], [weights])
    return Y, h_n


def fused_gru_directions(
    Xs: Sequence[torch.Tensor],
    h0s: Sequence[Optional[torch.Tensor]],
    weights: Sequence[Sequence[torch.Tensor]],
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Run several same-shaped GRUs (the two directions of a layer) in one
    loop, each on its own input with its own weights.

    The loop's cost is mostly a fixed overhead per op and per step, so two
    directions stacked cost little more than one.

    Xs (Sequence[torch.Tensor]): (batch, time, input) inputs, same shape.
    h0s (Sequence[Optional[torch.Tensor]]): (1, batch, hidden) initial
        states, or None for zeros.
    weights (Sequence[Sequence[torch.Tensor]]): Each GRU's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    RETURNS (Tuple[List[torch.Tensor], List[torch.Tensor]]): Each GRU's
        (batch, time, hidden) outputs, and its (1, batch, hidden) final state.
    """

    def loop(X, h0, *weights):
        save = torch.is_grad_enabled() and any(
            t.requires_grad for t in (X, h0) + weights
        )
        return _FusedGRU.apply(X, h0, *weights, save)

    return run_stacked(Xs, h0s, weights, loop)


class _FusedGRU(torch.autograd.Function):
    # K GRUs at once: inputs (K, B, T, I), weights (K, ...). Buffers are
    # time-major, (T, K, B, ...), so that each step's rows are contiguous (a
    # matrix product into a strided view copies through a temporary), and
    # the per-step views are made once per call with unbind(): at these
    # sizes a slice costs as much as a small kernel.

    @staticmethod
    def forward(ctx, X, h0, w_ih, w_hh, b_ih, b_hh, save):
        K, B, T, _ = X.shape
        H = w_hh.shape[2]
        X_tm = X.transpose(1, 2).reshape(K, T * B, -1)
        # One product per GRU for the input side of every step.
        GI = torch.baddbmm(b_ih.unsqueeze(1), X_tm, w_ih.transpose(1, 2))
        GI = GI.view(K, T, B, 3 * H).transpose(0, 1)
        # r and z (after the sigmoid), the candidate n, and W_hh h + b_hh:
        # what the backward pass needs and cannot get from the outputs. In
        # inference one step's worth, reused.
        T_kept = T if save else 1
        RZ = X.new_empty((T_kept, K, B, 2 * H))
        N = X.new_empty((T_kept, K, B, H))
        GH = X.new_empty((T_kept, K, B, 3 * H))
        # The states h_0 .. h_T: outputs and the backward pass's h_{t-1}.
        HS = X.new_empty((T + 1, K, B, H))
        HS[0] = h0
        w_hh_t = w_hh.transpose(1, 2)
        b_hh = b_hh.unsqueeze(1)
        h = HS[0]
        kept = [GH, GH[..., : 2 * H], GH[..., 2 * H :], RZ, RZ[..., :H], RZ[..., H:], N]
        if save:
            kept = [buf.unbind(0) for buf in kept]
        else:
            kept = [itertools.repeat(buf[0]) for buf in kept]
        for gi_rz, gi_n, y, gh, gh_rz, gh_n, rz, r, z, n in zip(
            GI[..., : 2 * H].unbind(0), GI[..., 2 * H :].unbind(0), HS[1:].unbind(0), *kept
        ):
            torch.baddbmm(b_hh, h, w_hh_t, out=gh)
            torch.add(gi_rz, gh_rz, out=rz).sigmoid_()
            torch.addcmul(gi_n, r, gh_n, out=n).tanh_()
            # h' = n + z * (h - n)
            torch.lerp(n, h, z, out=y)
            h = y
        if save:
            ctx.save_for_backward(X_tm, w_ih, w_hh, HS, RZ, N, GH)
        # (K, B, T, H)
        return HS[1:].permute(1, 2, 0, 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, dY):
        X_tm, w_ih, w_hh, HS, RZ, N, GH = ctx.saved_tensors
        T, K, B, H = N.shape
        dY = dY.permute(2, 0, 1, 3)  # (T, K, B, H)
        R = RZ[..., :H]
        Z = RZ[..., H:]
        # Everything in the chain rule that does not depend on the incoming
        # gradient, for all steps at once, so that the loop only multiplies:
        # dh -> (d n_in, d z) and d n_in -> (d r, d n_hh), where n_in is the
        # candidate's pre-activation and n_hh = W_hn h + b_hn.
        A = torch.addcmul(torch.ones_like(N), N, N, value=-1.0).mul_(1.0 - Z)
        Bz = torch.sub(HS[:-1], N).mul_(Z).mul_(1.0 - Z)
        C = torch.mul(GH[..., 2 * H :], R).mul_(1.0 - R)
        del GH
        # Gradients of the pre-activations, laid out [n_in, z, r, n_hh]: the
        # input side's [n_in, z, r] and the hidden side's [z, r, n_hh] are
        # then each one block for the matrix products, with the weights'
        # rows put in the same order.
        D = X_tm.new_empty((T, K, B, 4 * H))
        w_zrn = _reorder(w_hh, H, (1, 0, 2))
        # Two buffers for the gradient reaching h, used in turn.
        dh_bufs = (X_tm.new_empty((K, B, H)), X_tm.new_empty((K, B, H)))
        dh = dh_bufs[0]
        dh.copy_(dY[T - 1])
        dY_steps = dY.unbind(0)
        steps = zip(
            range(T - 1, -1, -1),
            reversed(D[..., :H].unbind(0)),
            reversed(D[..., H : 2 * H].unbind(0)),
            reversed(D[..., 2 * H : 3 * H].unbind(0)),
            reversed(D[..., 3 * H :].unbind(0)),
            reversed(D[..., H:].unbind(0)),
            reversed(A.unbind(0)),
            reversed(Bz.unbind(0)),
            reversed(C.unbind(0)),
            reversed(R.unbind(0)),
            reversed(Z.unbind(0)),
        )
        # Plain same-shape products: a broadcasting product into a strided
        # output took several times as long per call.
        for t, d_n, d_z, d_r, d_nh, d_hidden, a, b, c, r, z in steps:
            torch.mul(dh, a, out=d_n)
            torch.mul(dh, b, out=d_z)
            torch.mul(d_n, c, out=d_r)
            torch.mul(d_n, r, out=d_nh)
            # Gradient reaching h_{t-1}: through z * h, through W_hh, and
            # from the output at t - 1.
            nxt = dh_bufs[t % 2 == 0]
            if t > 0:
                torch.addcmul(dY_steps[t - 1], dh, z, out=nxt)
            else:
                torch.mul(dh, z, out=nxt)
            nxt.baddbmm_(d_hidden, w_zrn)
            dh = nxt
        d_h0 = dh
        # The products run on D's columns in its own order and only the
        # small weight-shaped results go back to nn.GRU's [r, z, n].
        D = D.transpose(0, 1).reshape(K, T * B, 4 * H)
        dGi = D[..., : 3 * H]
        dGh = D[..., H:]
        dX = dW_ih = db_ih = dW_hh = db_hh = None
        if ctx.needs_input_grad[0]:
            dX = torch.bmm(dGi, _reorder(w_ih, H, (2, 1, 0)))
            dX = dX.view(K, T, B, -1).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            dW_ih = _reorder(torch.bmm(dGi.transpose(1, 2), X_tm), H, (2, 1, 0))
        if ctx.needs_input_grad[3]:
            H_prev = HS[:-1].transpose(0, 1).reshape(K, T * B, H)
            dW_hh = _reorder(torch.bmm(dGh.transpose(1, 2), H_prev), H, (1, 0, 2))
        if ctx.needs_input_grad[4]:
            db_ih = _reorder(dGi.sum(1), H, (2, 1, 0))
        if ctx.needs_input_grad[5]:
            db_hh = _reorder(dGh.sum(1), H, (1, 0, 2))
        return dX, d_h0, dW_ih, dW_hh, db_ih, db_hh, None


def _reorder(W: torch.Tensor, H: int, order: Tuple[int, int, int]) -> torch.Tensor:
    # The three H-wide gate blocks of W's second axis (a stack of weight
    # matrices or biases) in the given order; (2, 1, 0) and (1, 0, 2) each
    # undo themselves.
    blocks = W.split(H, dim=1)
    return torch.cat([blocks[i] for i in order], dim=1)

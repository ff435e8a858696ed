"""A one-layer GRU for the CPU whose backward pass is written by hand.

Plain PyTorch. On CUDA ``nn.GRU`` runs cuDNN's fused kernels and on the CPU
``nn.LSTM`` runs oneDNN's, but PyTorch has no fused GRU for the CPU: it runs
the cell as separate tensor ops per time step, and autograd records every one
of them and replays a backward node for each: an ``rnn_textcat`` training
step made 265k aten ops with a GRU against 1.4k with the LSTM, and trained at
0.29x of its speed (docs/performance.md, "Fused CPU loops for GRU and Elman layers").

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

The loop takes a ragged batch (``cpu_loop.StepLayout``): sequences sorted
longest first, and at each step only those still running. ``RNNStack`` runs
a whole batch of variable-length docs this way, with no padding; a padded
batch is the case where every sequence runs every step.
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

__all__ = ["fused_gru", "fused_gru_applies", "fused_gru_directions", "fused_gru_ragged"]


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
    return run_stacked(Xs, h0s, weights, _loop)


def fused_gru_ragged(
    X: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]], layout: StepLayout
) -> torch.Tensor:
    """Run K same-shaped GRUs from zero states over a ragged batch: each
    step computes only the sequences still running, so there is no padding
    and one loop covers sequences of every length.

    X (torch.Tensor): (K, N, input) packed inputs (``StepLayout``).
    weights (Sequence[Sequence[torch.Tensor]]): Each GRU's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    layout (StepLayout): The batch's steps.
    RETURNS (torch.Tensor): (K * N, hidden) outputs in step layout.
    """
    return run_ragged(X, weights, layout, _loop)


def _loop(X, h0, w_ih, w_hh, b_ih, b_hh, layout):
    save = torch.is_grad_enabled() and any(
        t.requires_grad for t in (X, h0, w_ih, w_hh, b_ih, b_hh)
    )
    return _FusedGRU.apply(X, h0, w_ih, w_hh, b_ih, b_hh, layout, save)


class _FusedGRU(torch.autograd.Function):
    # K GRUs at once: packed inputs (K, N, I), weights (K, ...). Each step's
    # buffers are contiguous (K, n_t, ...) blocks of step-layout buffers (a
    # matrix product into a strided view copies through a temporary), and
    # the per-step views are made once per call, one unbind per run of
    # equal batch sizes: at these sizes a slice costs as much as a small
    # kernel.

    @staticmethod
    def forward(ctx, X, h0, w_ih, w_hh, b_ih, b_hh, layout, save):
        K, N, _ = X.shape
        H = w_hh.shape[2]
        n0 = layout.sizes[0]
        # r and z (after the sigmoid), the candidate n, and W_hh h + b_hh:
        # what the backward pass needs and cannot get from the outputs. In
        # inference one step's worth, reused.
        rows = K * N if save else K * n0
        RZ = X.new_empty((rows, 2 * H))
        NN = X.new_empty((rows, H))
        GH = X.new_empty((rows, 3 * H))
        views = layout.step_views if save else layout.scratch_views
        # The initial states, then every step's outputs: the backward
        # pass's h_{t-1} are rows of it.
        HS = X.new_empty((K * n0 + K * N, H))
        HS[: K * n0] = h0.reshape(K * n0, H)
        w_ih_t = w_ih.transpose(1, 2)
        w_hh_t = w_hh.transpose(1, 2)
        b_ih = b_ih.unsqueeze(1)
        b_hh = b_hh.unsqueeze(1)
        h = HS[: K * n0].view(K, n0, H)
        step_buffers = list(zip(
            layout.sizes,
            layout.step_views(HS[K * n0 :]),
            *(views(buf) for buf in (GH, GH[:, : 2 * H], GH[:, 2 * H :], RZ, RZ[:, :H], RZ[:, H:], NN)),
        ))
        for t0, t1 in layout.blocks(PROJECTION_BLOCK_ROWS):
            # One product per GRU for the input side of a block of steps.
            r0, r1 = int(layout.offsets[t0]), int(layout.offsets[t1])
            GI = torch.baddbmm(b_ih, X[:, r0:r1], w_ih_t)
            steps = zip(
                layout.packed_views(GI[..., : 2 * H], t0, t1),
                layout.packed_views(GI[..., 2 * H :], t0, t1),
                step_buffers[t0:t1],
            )
            for gi_rz, gi_n, (n, y, gh, gh_rz, gh_n, rz, r, z, cand) in steps:
                if h.shape[1] != n:
                    # Sorted longest first: the sequences still running
                    # are the first n.
                    h = h[:, :n]
                torch.baddbmm(b_hh, h, w_hh_t, out=gh)
                torch.add(gi_rz, gh_rz, out=rz).sigmoid_()
                torch.addcmul(gi_n, r, gh_n, out=cand).tanh_()
                # h' = n + z * (h - n)
                torch.lerp(cand, h, z, out=y)
                h = y
            del GI
        if save:
            ctx.layout = layout
            ctx.save_for_backward(X, w_ih, w_hh, HS, RZ, NN, GH)
        return HS[K * n0 :]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY):
        X, w_ih, w_hh, HS, RZ, NN, GH = ctx.saved_tensors
        layout = ctx.layout
        K, N, H = layout.K, layout.N, NN.shape[1]
        sizes = layout.sizes
        dY = dY.contiguous()
        R = RZ[:, :H]
        Z = RZ[:, H:]
        H_prev = previous_states(HS, layout)
        # Everything in the chain rule that does not depend on the incoming
        # gradient, for all steps at once, so that the loop only multiplies:
        # dh -> (d n_in, d z) and d n_in -> (d r, d n_hh), where n_in is the
        # candidate's pre-activation and n_hh = W_hn h + b_hn.
        A = torch.addcmul(torch.ones_like(NN), NN, NN, value=-1.0).mul_(1.0 - Z)
        Bz = torch.sub(H_prev, NN).mul_(Z).mul_(1.0 - Z)
        C = torch.mul(GH[:, 2 * H :], R).mul_(1.0 - R)
        del GH
        # Gradients of the pre-activations, laid out [n_in, z, r, n_hh]: the
        # input side's [n_in, z, r] and the hidden side's [z, r, n_hh] are
        # then each one block for the matrix products, with the weights'
        # rows put in the same order.
        D = X.new_empty((K * N, 4 * H))
        w_zrn = _reorder(w_hh, H, (1, 0, 2))
        grads = HiddenGradients(X, layout, H)
        dY_steps = layout.step_views(dY)
        dh = grads.start(dY_steps[-1])
        steps = zip(
            range(layout.T - 1, -1, -1),
            *(
                reversed(layout.step_views(buf))
                for buf in (D[:, :H], D[:, H : 2 * H], D[:, 2 * H : 3 * H], D[:, 3 * H :], D[:, H:], A, Bz, C, R, Z)
            ),
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
            nxt, top = grads.next(t, dY_steps[t - 1] if t > 0 else None)
            if top is nxt:
                if t > 0:
                    torch.addcmul(dY_steps[t - 1], dh, z, out=nxt)
                else:
                    torch.mul(dh, z, out=nxt)
            else:
                # Sequences that end at t - 1 join here: their rows hold
                # the output's gradient alone.
                top.addcmul_(dh, z)
            top.baddbmm_(d_hidden, w_zrn)
            dh = nxt
        d_h0 = dh
        # The products run on D's columns in its own order and only the
        # small weight-shaped results go back to nn.GRU's [r, z, n].
        D = layout.to_packed(D)
        dGi = D[..., : 3 * H]
        dGh = D[..., H:]
        dX = dW_ih = db_ih = dW_hh = db_hh = None
        if ctx.needs_input_grad[0]:
            dX = torch.bmm(dGi, _reorder(w_ih, H, (2, 1, 0)))
        if ctx.needs_input_grad[2]:
            dW_ih = _reorder(torch.bmm(dGi.transpose(1, 2), X), H, (2, 1, 0))
        if ctx.needs_input_grad[3]:
            H_prev = layout.to_packed(H_prev)
            dW_hh = _reorder(torch.bmm(dGh.transpose(1, 2), H_prev), H, (1, 0, 2))
        if ctx.needs_input_grad[4]:
            db_ih = _reorder(dGi.sum(1), H, (2, 1, 0))
        if ctx.needs_input_grad[5]:
            db_hh = _reorder(dGh.sum(1), H, (1, 0, 2))
        return dX, d_h0, dW_ih, dW_hh, db_ih, db_hh, None, None


def _reorder(W: torch.Tensor, H: int, order: Tuple[int, int, int]) -> torch.Tensor:
    # The three H-wide gate blocks of W's second axis (a stack of weight
    # matrices or biases) in the given order; (2, 1, 0) and (1, 0, 2) each
    # undo themselves.
    blocks = W.split(H, dim=1)
    return torch.cat([blocks[i] for i in order], dim=1)

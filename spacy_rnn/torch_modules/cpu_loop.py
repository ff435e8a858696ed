"""What the fused CPU loops (``fused_gru.py``, ``fused_elman.py``) share:
when they may stand in for a PyTorch module, how several same-shaped
recurrent layers (the two directions of a layer) are stacked into one call
and split again, and the ragged, step-by-step layout the loops keep their
buffers in. Plain PyTorch."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy
import torch
from torch import nn


def cpu_loop_applies(rnn: nn.Module, X, module_type: Type[nn.Module]) -> bool:
    """Whether a fused CPU loop can stand in for ``rnn(X)``.

    rnn (nn.Module): The recurrent module about to run.
    X: Its input: a tensor, or a ``PackedSequence`` (never fused).
    module_type (Type[nn.Module]): The exact module class the loop
        implements (``nn.GRU`` or ``nn.RNN``); subclasses, such as int8
        modules, keep their own kernels.
    RETURNS (bool): True for a one-layer, one-directional, batch-first module
        of that class with biases, on a float32 or float64 CPU tensor,
        outside CPU autocast.
    """
    return (
        type(rnn) is module_type
        and isinstance(X, torch.Tensor)
        and X.device.type == "cpu"
        and X.dtype in (torch.float32, torch.float64)
        and X.dim() == 3
        and rnn.num_layers == 1
        and not rnn.bidirectional
        and rnn.batch_first
        and rnn.bias
        and getattr(rnn, "proj_size", 0) == 0
        and not cpu_autocast_enabled()
    )


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on, on every PyTorch the package accepts
    (``is_autocast_enabled`` takes a device type only from PyTorch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


# Packed rows per input-projection product in the fused loops: large enough
# that the product runs at full speed, small enough that its (rows, gates x
# hidden) output stays a fraction of the batch's own activations.
PROJECTION_BLOCK_ROWS = 4096


class StepLayout:
    """Where the rows of a ragged batch of K same-shaped recurrent layers
    live, time step by time step.

    The sequences are sorted longest first, so at step t the first
    ``batch_sizes[t]`` of them are still running (PyTorch's packed-sequence
    convention). Two layouts of the same rows are used:

    - packed: a (K, N, width) tensor, N = sum(batch_sizes), whose rows for
      layer k are step 0's sequences, then step 1's, and so on. The input
      projection and the weight gradients are one product per layer on it.
    - step: a (K * N, width) tensor whose block for step t is a contiguous
      (K, batch_sizes[t], width) matrix stack, which is what a batched
      matrix product can write into without a temporary.

    Runs of steps with the same batch size ("segments") share one view per
    buffer, so the per-step views cost one ``unbind`` per segment.

    batch_sizes (Sequence[int]): Sequences still running at each step,
        non-increasing and positive.
    K (int): Number of layers run together.
    """

    def __init__(self, batch_sizes: Sequence[int], K: int):
        sizes = numpy.asarray(batch_sizes, dtype="int64")
        if sizes.size and (sizes[0] <= 0 or numpy.any(numpy.diff(sizes) > 0) or sizes[-1] <= 0):
            raise ValueError(f"batch sizes must be positive and non-increasing, got {sizes[:10]}...")
        self.K = int(K)
        self.sizes = sizes.tolist()
        self.T = len(self.sizes)
        self.offsets = numpy.zeros(self.T + 1, dtype="int64")
        numpy.cumsum(sizes, out=self.offsets[1:])
        self.N = int(self.offsets[-1])
        # (first step, end step, batch size) of each run of equal sizes.
        starts = [0] + [t for t in range(1, self.T) if self.sizes[t] != self.sizes[t - 1]]
        ends = starts[1:] + [self.T]
        self.segments = [(t0, t1, self.sizes[t0]) for t0, t1 in zip(starts, ends)]
        # Each packed row's step, and its sequence (its rank among the
        # sequences, longest first).
        self.row_steps = numpy.repeat(numpy.arange(self.T), sizes)
        self.row_seqs = numpy.arange(self.N) - self.offsets[self.row_steps]
        self._step_rows: Optional[numpy.ndarray] = None

    @classmethod
    def uniform(cls, T: int, B: int, K: int) -> "StepLayout":
        """The layout of a padded (B, T) batch: every sequence runs T steps."""
        return cls([B] * T, K)

    def step_views(self, buf: torch.Tensor) -> List[torch.Tensor]:
        """Per-step (K, n_t, width) views of a step-layout (K * N, width)
        buffer."""
        K = self.K
        views: List[torch.Tensor] = []
        for t0, t1, n in self.segments:
            rows = buf[K * int(self.offsets[t0]) : K * int(self.offsets[t1])]
            views.extend(rows.view(t1 - t0, K, n, buf.shape[-1]).unbind(0))
        return views

    def scratch_views(self, buf: torch.Tensor) -> List[torch.Tensor]:
        """Per-step (K, n_t, width) views of a (K * batch_sizes[0], width)
        scratch buffer, the same view for every step of a segment: the step
        buffers of a pass that keeps nothing for backward."""
        K = self.K
        views: List[torch.Tensor] = []
        for t0, t1, n in self.segments:
            view = buf[: K * n].view(K, n, buf.shape[-1])
            views.extend([view] * (t1 - t0))
        return views

    def packed_views(self, packed: torch.Tensor, t0: int = 0, t1: Optional[int] = None) -> List[torch.Tensor]:
        """Per-step (K, n_t, width) views of a packed (K, rows, width)
        tensor holding steps t0 to t1 (strided across K: only for reading,
        or for elementwise writes). t0 and t1 must start and end segments.
        """
        t1 = self.T if t1 is None else t1
        base = int(self.offsets[t0])
        views: List[torch.Tensor] = []
        for s0, s1, n in self.segments:
            if s0 < t0 or s1 > t1:
                continue
            rows = packed[:, int(self.offsets[s0]) - base : int(self.offsets[s1]) - base]
            views.extend(rows.view(packed.shape[0], s1 - s0, n, packed.shape[-1]).unbind(1))
        return views

    def blocks(self, min_rows: int) -> List[Tuple[int, int]]:
        """Runs of whole segments of at least ``min_rows`` packed rows each
        (the last may have fewer), as (first step, end step) pairs: the
        loops compute their input projection block by block, so that it
        never holds the whole batch at once."""
        out: List[Tuple[int, int]] = []
        start = 0
        for _, t1, _ in self.segments:
            if int(self.offsets[t1] - self.offsets[start]) >= min_rows:
                out.append((start, t1))
                start = t1
        if start < self.T:
            out.append((start, self.T))
        return out

    def step_rows(self) -> numpy.ndarray:
        """The step-layout row of each packed row, as a (K, N) array."""
        if self._step_rows is not None:
            return self._step_rows
        K, t, i = self.K, self.row_steps, self.row_seqs
        n = numpy.asarray(self.sizes, dtype="int64")[t]
        k = numpy.arange(K)[:, None]
        self._step_rows = K * self.offsets[t][None, :] + k * n[None, :] + i[None, :]
        return self._step_rows

    def previous_rows(self) -> numpy.ndarray:
        """For each step-layout row, the row that holds the same sequence's
        state one step earlier in a buffer made of the K * batch_sizes[0]
        initial states followed by the step-layout outputs: a (K * N,) array.
        """
        K, t, i = self.K, self.row_steps, self.row_seqs
        sizes = numpy.asarray(self.sizes, dtype="int64")
        k = numpy.arange(K)[:, None]
        # Step t - 1's rows, shifted past the initial states; step 0 reads
        # the initial states themselves, which sit where its rows would.
        tp = numpy.maximum(t - 1, 0)
        prev = K * sizes[0] + K * self.offsets[tp] + k * sizes[tp] + i
        prev[:, t == 0] = (k * sizes[0] + i)[:, t == 0]
        out = numpy.empty(K * self.N, dtype="int64")
        out[self.step_rows().reshape(-1)] = prev.reshape(-1)
        return out

    def to_packed(self, step: torch.Tensor) -> torch.Tensor:
        """A step-layout (K * N, width) tensor as a packed (K, N, width) one."""
        if len(self.segments) == 1:
            T, n = self.T, self.sizes[0]
            return step.view(T, self.K, n, -1).transpose(0, 1).reshape(self.K, self.N, -1)
        index = torch.from_numpy(self.step_rows().reshape(-1))
        return step.index_select(0, index).view(self.K, self.N, -1)


def previous_states(HS: torch.Tensor, layout: StepLayout) -> torch.Tensor:
    """Each step-layout row's state one step earlier (h_{t-1}), from a
    buffer of the initial states followed by the step-layout outputs.

    HS (torch.Tensor): (K * batch_sizes[0] + K * N, hidden) states.
    layout (StepLayout): The batch's steps.
    RETURNS (torch.Tensor): (K * N, hidden), in step layout.
    """
    if len(layout.segments) == 1:
        # Every step has the same rows: h_{t-1} is the row one block back.
        return HS[: layout.K * layout.N]
    return HS.index_select(0, torch.from_numpy(layout.previous_rows()))


class HiddenGradients:
    """The gradient reaching each step's input state in a backward loop
    over a ragged batch: two buffers used in turn, with one view per batch
    size.

    like (torch.Tensor): A tensor of the dtype and device to use.
    layout (StepLayout): The batch's steps.
    H (int): Width of the state.
    """

    def __init__(self, like: torch.Tensor, layout: StepLayout, H: int):
        self.layout = layout
        self.H = H
        size = layout.K * layout.sizes[0] * H
        self.bufs = (like.new_empty(size), like.new_empty(size))
        self.cur = 0
        self.views: Dict[Tuple[int, int], torch.Tensor] = {}

    def start(self, dY_last: torch.Tensor) -> torch.Tensor:
        """The gradient reaching the last step's output: its own."""
        self.cur = 0
        dh = self._view(0, self.layout.sizes[-1])
        dh.copy_(dY_last)
        return dh

    def next(
        self, t: int, dY_prev: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Where the gradient reaching step t's input state goes.

        t (int): The step whose backward pass is running.
        dY_prev (Optional[torch.Tensor]): The output gradient of step t - 1
            (None at step 0).
        RETURNS (Tuple[torch.Tensor, torch.Tensor]): The (K, n_{t-1}, H)
            gradient and the view of its first n_t rows, the sequences that
            run on at step t. Where more sequences run at t - 1 than at t,
            the gradient already holds ``dY_prev`` and only that view is
            left to add to; otherwise the two are the same tensor and the
            caller fills it.
        """
        sizes = self.layout.sizes
        n = sizes[t]
        n_prev = sizes[t - 1] if t > 0 else n
        self.cur = 1 - self.cur
        nxt = self._view(self.cur, n_prev)
        if n_prev == n:
            return nxt, nxt
        nxt.copy_(dY_prev)
        return nxt, nxt[:, :n]

    def _view(self, j: int, n: int) -> torch.Tensor:
        view = self.views.get((j, n))
        if view is None:
            view = self.bufs[j][: self.layout.K * n * self.H].view(self.layout.K, n, self.H)
            self.views[(j, n)] = view
        return view


def run_stacked(
    Xs: Sequence[torch.Tensor],
    h0s: Sequence[Optional[torch.Tensor]],
    weights: Sequence[Sequence[torch.Tensor]],
    loop: Callable[..., torch.Tensor],
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Stack K same-shaped layers' padded inputs, initial states and
    weights, run ``loop`` once on the stacks, and split its output per layer.

    Xs (Sequence[torch.Tensor]): (batch, time, input) inputs, same shape.
    h0s (Sequence[Optional[torch.Tensor]]): (1, batch, hidden) initial
        states, or None for zeros.
    weights (Sequence[Sequence[torch.Tensor]]): Each layer's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    loop (Callable[..., torch.Tensor]): Called as ``loop(X, h0, w_ih, w_hh,
        b_ih, b_hh, layout)`` with a packed (K, time * batch, input) input,
        (K, batch, hidden) states, (K, ...) weights and the batch's
        ``StepLayout``; returns the step-layout outputs.
    RETURNS (Tuple[List[torch.Tensor], List[torch.Tensor]]): Each layer's
        (batch, time, hidden) outputs, and its (1, batch, hidden) final state.
    """
    K = len(Xs)
    X = Xs[0]
    B, T = X.shape[0], X.shape[1]
    H = weights[0][1].shape[1]
    h0 = torch.stack(
        [X.new_zeros((B, H)) if h is None else h.reshape(B, H).to(X.dtype) for h in h0s]
    )
    if T == 0 or B == 0:
        return [X.new_empty((B, T, H)) for _ in range(K)], list(h0.unsqueeze(1).unbind(0))
    X_all = X.unsqueeze(0) if K == 1 else torch.stack(list(Xs))
    packed = X_all.transpose(1, 2).reshape(K, T * B, -1)
    Y = loop(packed, h0, *_stack_weights(weights), StepLayout.uniform(T, B, K))
    # Step layout of a uniform batch is (T, K, B, H): a view away.
    Y = Y.view(T, K, B, H).permute(1, 2, 0, 3)
    return list(Y.unbind(0)), list(Y[:, :, -1].unsqueeze(1).unbind(0))


def run_ragged(
    X: torch.Tensor,
    weights: Sequence[Sequence[torch.Tensor]],
    layout: StepLayout,
    loop: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Run K same-shaped layers over a ragged batch from zero states.

    X (torch.Tensor): (K, N, input) packed inputs (see ``StepLayout``).
    weights (Sequence[Sequence[torch.Tensor]]): Each layer's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    layout (StepLayout): The batch's steps; ``layout.K`` is ``len(weights)``.
    loop (Callable[..., torch.Tensor]): As for ``run_stacked``.
    RETURNS (torch.Tensor): (K * N, hidden) outputs in step layout.
    """
    K = len(weights)
    H = weights[0][1].shape[1]
    h0 = X.new_zeros((K, layout.sizes[0], H))
    return loop(X, h0, *_stack_weights(weights), layout)


def _stack_weights(weights: Sequence[Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    # Each of weight_ih, weight_hh, bias_ih, bias_hh stacked over the layers.
    return [torch.stack([w[j] for w in weights]) for j in range(4)]

"""A stack of recurrent layers that encodes variable-length sequences exactly.

Plain PyTorch: nothing here imports spaCy or Thinc, so the module can be
reused, tested and benchmarked on its own.

Why not one fused bidirectional ``nn.LSTM`` over a padded batch: its backward
direction starts at the end of the padded tensor and so reads the padding of
every shorter sequence (spaCy's ``TorchBiLSTMEncoder.v1`` does exactly this).
``pack_padded_sequence`` is exact but, on CPU, several times slower. The
default here keeps one single-layer module per direction and layer, and runs
the backward direction as a forward pass over each sequence reversed inside
its own length: the padding then trails every sequence in both directions and
can never leak into a real position.

GRU and Elman stacks on the CPU skip the buckets: their fused loops
(``fused_gru.py``, ``fused_elman.py``) run the whole batch, sorted longest
first, in one loop per layer whose every step computes only the sequences
still running (the ragged layout of ``cpu_loop.StepLayout``): no padded
position is computed and no step is run twice.

Long sequences in inference are encoded in chunks of ``inference_chunk``
time steps per layer and direction, carrying the recurrent state from one
chunk to the next (the right-to-left direction walks its chunks from the
end), so memory for the recurrent kernels' work space is bounded by the
chunk, not the doc, and the outputs are the same as unchunked encoding.
"""
import functools
from typing import List, Optional, Sequence, Tuple

import numpy
import torch
from torch import nn

from .cpu_loop import StepLayout
from .fused_elman import fused_elman_applies, fused_elman_directions, fused_elman_ragged
from .fused_gru import fused_gru_applies, fused_gru_directions, fused_gru_ragged
from .transfer import to_device

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
INITS = ("orthogonal", "xavier", "kaiming", "default")
METHODS = ("auto", "reverse", "packed")

# Per-time-step cost of a recurrent call, in units of "one more sequence in
# the batch". Used to decide how to split a batch into length buckets: a new
# bucket saves padded compute but pays this overhead for each of its steps.
# Measured on a 2-core CPU with a 128-wide BiLSTM (benchmarks/encoder_speed.py).
DEFAULT_BUCKET_OVERHEAD = 4.0
# On CUDA a call costs more launches relative to its arithmetic: on an H100
# the same benchmark ran fastest at 16 (0.82-0.83 of the padded fused
# call's time, against 1.04-1.07 at 4), in two runs.
CUDA_BUCKET_OVERHEAD = 16.0

# Rows per group of sequences when the fused CPU loops encode a large batch
# in inference (RNNStack._forward_ragged): enough rows that each step still
# has many sequences to compute, few enough that the loop's copies of its
# input and output stay small next to the batch's embeddings.
INFERENCE_GROUP_ROWS = 32768

# Time steps per recurrent call when encoding long sequences in inference
# (benchmarks/long_doc_memory.py): short enough that a call's work space is
# small, long enough that the per-call overhead does not matter.
DEFAULT_INFERENCE_CHUNK = 4096


class RNNStack(nn.Module):
    """Stacked LSTM / GRU / Elman RNN, one- or two-directional.

    input_size (int): Width of the input vectors.
    hidden_size (int): Width of the output vectors; with ``bidirectional``
        each direction gets half of it.
    depth (int): Number of recurrent layers.
    cell (str): One of "lstm", "gru", "rnn_tanh", "rnn_relu".
    bidirectional (bool): Run a second, right-to-left direction per layer.
    dropout (float): Dropout applied between layers (not after the last).
    residual (bool): Add each layer's input to its output where widths match.
    layer_norm (bool): Layer-normalise each layer's output.
    init (str): "orthogonal", "xavier", "kaiming" or "default" (PyTorch's).
    method (str): "reverse" (per-direction modules, sequences reversed inside
        their own length), "packed" (``pack_padded_sequence``), or "auto"
        (which is "reverse": exact, and faster than "packed" on CPU and CUDA
        in ``benchmarks/encoder_speed.py``).
    bucket_overhead (Optional[float]): Cost model constant for length
        bucketing; 0 disables bucketing beyond sorting. None (the default):
        ``DEFAULT_BUCKET_OVERHEAD`` on CPU, ``CUDA_BUCKET_OVERHEAD`` on CUDA.
        Any value gives the same outputs; only the speed changes.
    locked_dropout (bool): Use one dropout mask per sequence for all time
        steps (variational dropout, Gal & Ghahramani 2016) instead of a new
        mask per position; applies to input, between-layer and output dropout.
    input_dropout (float): Dropout on the stack's input.
    output_dropout (float): Dropout on the stack's output.
    weight_drop (float): DropConnect on the hidden-to-hidden weights
        (Merity et al. 2018): one mask per forward call, shared by all steps.
    inference_chunk (int): In inference (``eval()`` mode and no autograd),
        run sequences longer than this many steps in chunks of this length,
        carrying the state across chunks: the same outputs, with memory for
        the recurrent kernels bounded by the chunk. 0 disables chunking. Not
        part of the saved state; change it on a loaded module freely.

    GRU and Elman layers on the CPU run the loops of ``fused_gru.py`` and
    ``fused_elman.py`` (a hand-written backward pass, both directions of a
    layer in one loop) where they are faster than PyTorch's own: in
    training, and for two directions in inference. ``forward`` runs the
    whole batch through one ragged loop per layer, with no buckets and no
    padding, in training and inference and for one direction too
    (``ragged_loop_applies``); ``bucket_overhead`` then has no effect. Set
    ``ragged_cpu_loop`` to False to run the loops once per length bucket
    instead. The outputs are
    ``nn.GRU``'s and ``nn.RNN``'s up to rounding. Set ``fused_cpu_kernels``
    to False on a stack, or on the class for every stack, to run PyTorch's
    modules throughout (it is not part of the saved state). LSTMs always run
    PyTorch's kernels, which are fused already (oneDNN on the CPU, cuDNN on
    CUDA).
    """

    fused_cpu_kernels = True
    ragged_cpu_loop = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        depth: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
        residual: bool = False,
        layer_norm: bool = False,
        init: str = "orthogonal",
        method: str = "auto",
        bucket_overhead: Optional[float] = None,
        locked_dropout: bool = False,
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        weight_drop: float = 0.0,
        inference_chunk: int = DEFAULT_INFERENCE_CHUNK,
    ):
        super().__init__()
        check_rnn_settings(
            input_size=input_size,
            hidden_size=hidden_size,
            depth=depth,
            cell=cell,
            bidirectional=bidirectional,
            dropout=dropout,
            init=init,
            method=method,
        )
        for name, rate in (
            ("input_dropout", input_dropout),
            ("output_dropout", output_dropout),
            ("weight_drop", weight_drop),
        ):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"RNN {name} must be in [0, 1), got {rate}")
        if inference_chunk < 0:
            raise ValueError(
                f"RNN inference_chunk must be 0 (off) or a positive number of "
                f"steps, got {inference_chunk}"
            )
        self.inference_chunk = int(inference_chunk)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.cell = cell
        self.bidirectional = bidirectional
        self.residual = residual
        self.method = method
        # None: the measured default of the device the batch is on.
        self.bucket_overhead = None if bucket_overhead is None else float(bucket_overhead)
        self.dirs = 2 if bidirectional else 1
        per_dir = hidden_size // self.dirs
        self.fwd = nn.ModuleList()
        self.bwd = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(depth):
            n_in = input_size if i == 0 else hidden_size
            self.fwd.append(_make_cell(cell, n_in, per_dir))
            if bidirectional:
                self.bwd.append(_make_cell(cell, n_in, per_dir))
            if layer_norm:
                self.norms.append(nn.LayerNorm(hidden_size))
        self.dropout_rate = float(dropout)
        self.locked_dropout = bool(locked_dropout)
        self.input_dropout = float(input_dropout)
        self.output_dropout = float(output_dropout)
        self.weight_drop = float(weight_drop)
        self.init_weights(init)

    # -- initialisation -------------------------------------------------

    def init_weights(self, scheme: str) -> None:
        """Re-initialise the recurrent weights.

        scheme (str): "orthogonal", "xavier", "kaiming" or "default".
        """
        if scheme == "default":
            return
        n_gates = _n_gates(self.cell)
        nonlinearity = "relu" if self.cell == "rnn_relu" else "tanh"
        for module in list(self.fwd) + list(self.bwd):
            for name, param in module.named_parameters():
                with torch.no_grad():
                    if name.startswith("bias"):
                        param.zero_()
                        # A forget gate that starts open lets gradients flow
                        # through long sequences from the first update.
                        if self.cell == "lstm" and name.startswith("bias_ih"):
                            h = param.shape[0] // 4
                            param[h : 2 * h].fill_(1.0)
                        continue
                    # Initialise each gate's block on its own, so that an
                    # orthogonal recurrent matrix is orthogonal per gate.
                    for block in param.chunk(n_gates, dim=0):
                        if scheme == "orthogonal" and name.startswith("weight_hh"):
                            nn.init.orthogonal_(block)
                        elif scheme == "kaiming":
                            nn.init.kaiming_uniform_(block, nonlinearity=nonlinearity)
                        else:
                            nn.init.xavier_uniform_(block)

    # -- forward passes -------------------------------------------------

    def forward(self, flat: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Encode a batch of sequences given as one concatenated matrix.

        flat (torch.Tensor): (sum(lengths), input_size) rows of all sequences.
        lengths (Sequence[int]): Length of each sequence, in order.
        RETURNS (torch.Tensor): (sum(lengths), hidden_size) outputs, same order.
        """
        n_rows = int(sum(lengths))
        if flat.shape[0] != n_rows:
            raise ValueError(
                f"RNNStack: got {flat.shape[0]} rows for lengths summing to {n_rows}"
            )
        if n_rows == 0:
            return flat.new_zeros((0, self.hidden_size))
        starts = numpy.zeros(len(lengths), dtype="int64")
        lengths_np = numpy.asarray(lengths, dtype="int64")
        if len(lengths) > 1:
            starts[1:] = numpy.cumsum(lengths_np)[:-1]
        # Longest first: each bucket is then a contiguous run, and "packed"
        # needs the order anyway.
        order = numpy.argsort(-lengths_np, kind="stable")
        order = order[lengths_np[order] > 0]
        ragged = self._ragged_loop(flat, int(lengths_np.max()))
        if ragged is not None:
            return self._forward_ragged(flat, lengths_np, starts, order, ragged)
        if self._inference():
            return self._forward_lean(flat, lengths_np, starts, order)
        padded_flat = torch.cat([flat, flat.new_zeros((1, flat.shape[1]))], dim=0)
        outputs = []
        out_positions = []
        for bucket in plan_buckets(lengths_np[order], self._overhead(flat)):
            seqs = order[bucket[0] : bucket[1]]
            b_lengths = lengths_np[seqs]
            T = int(b_lengths[0])
            steps = numpy.arange(T)
            valid = steps[None, :] < b_lengths[:, None]
            gather = numpy.where(valid, starts[seqs][:, None] + steps[None, :], n_rows)
            X = _GatherRows.apply(padded_flat, to_device(gather, flat.device))
            Y = self.forward_padded(X, b_lengths.tolist())
            valid_rows = to_device(numpy.flatnonzero(valid), flat.device)
            outputs.append(Y.reshape(-1, self.hidden_size).index_select(0, valid_rows))
            out_positions.append(gather[valid])
        Y_sorted = torch.cat(outputs, dim=0)
        positions = numpy.concatenate(out_positions)
        inverse = numpy.empty_like(positions)
        inverse[positions] = numpy.arange(len(positions))
        return Y_sorted.index_select(0, to_device(inverse, flat.device))

    def _overhead(self, X: torch.Tensor) -> float:
        if self.bucket_overhead is not None:
            return self.bucket_overhead
        return CUDA_BUCKET_OVERHEAD if X.is_cuda else DEFAULT_BUCKET_OVERHEAD

    def _inference(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _forward_lean(self, flat, lengths_np, starts, order) -> torch.Tensor:
        """``forward`` without autograd: the same buckets and the same
        padded calls, but a lone sequence is a view of ``flat`` rather than
        a gathered copy, and each bucket's rows are written straight into
        the output instead of being concatenated and reordered."""
        n_rows = flat.shape[0]
        buckets = plan_buckets(lengths_np[order], self._overhead(flat))
        if len(order) == 1 and int(lengths_np[order[0]]) == n_rows:
            # One doc: its output is the whole result, no copy at all.
            return self.forward_padded(flat.unsqueeze(0), [n_rows])[0]
        padded_flat = None
        out = None
        for bucket in buckets:
            seqs = order[bucket[0] : bucket[1]]
            b_lengths = lengths_np[seqs]
            if len(seqs) == 1:
                start, length = int(starts[seqs[0]]), int(b_lengths[0])
                Y = self.forward_padded(flat[start : start + length].unsqueeze(0), [length])
                rows = Y[0]
                target = slice(start, start + length)
            else:
                if padded_flat is None:
                    padded_flat = torch.cat([flat, flat.new_zeros((1, flat.shape[1]))], dim=0)
                T = int(b_lengths[0])
                steps = numpy.arange(T)
                valid = steps[None, :] < b_lengths[:, None]
                gather = numpy.where(valid, starts[seqs][:, None] + steps[None, :], n_rows)
                X = padded_flat[to_device(gather, flat.device)]
                Y = self.forward_padded(X, b_lengths.tolist())
                del X
                valid_rows = to_device(numpy.flatnonzero(valid), flat.device)
                rows = Y.reshape(-1, self.hidden_size).index_select(0, valid_rows)
                target = to_device(gather[valid], flat.device)
            if out is None:
                out = rows.new_empty((n_rows, self.hidden_size))
            out[target] = rows
            del Y, rows
        return out

    def _forward_ragged(self, flat, lengths_np, starts, order, run) -> torch.Tensor:
        """``forward`` through a fused CPU loop that runs the whole batch at
        once, each step over the sequences still running: no padding, no
        buckets, and one loop per layer whatever the lengths. In inference,
        a batch of more than ``INFERENCE_GROUP_ROWS`` rows runs in groups of
        sequences of about that many rows, so that the loop's copies of its
        input and output stay bounded."""
        sorted_lengths = lengths_np[order]
        if not self._inference():
            row_seq = None
            if self.locked_dropout:
                row_seq = numpy.repeat(numpy.arange(len(lengths_np)), lengths_np)
                row_seq = torch.from_numpy(row_seq)
            return self._ragged_pass(flat, starts[order], sorted_lengths, run, row_seq)
        # Cut the sorted sequences into groups of at least
        # INFERENCE_GROUP_ROWS rows each (the last may have fewer).
        ends = numpy.cumsum(sorted_lengths)
        cuts = [0]
        while cuts[-1] < len(order):
            done = int(ends[cuts[-1] - 1]) if cuts[-1] else 0
            cut = int(numpy.searchsorted(ends, done + INFERENCE_GROUP_ROWS, side="left")) + 1
            cuts.append(min(cut, len(order)))
        if len(cuts) == 2:
            return self._ragged_pass(flat, starts[order], sorted_lengths, run)
        out = flat.new_empty((flat.shape[0], self.hidden_size))
        for a, b in zip(cuts, cuts[1:]):
            seqs = order[a:b]
            lengths = lengths_np[seqs]
            local_starts = numpy.cumsum(lengths) - lengths
            rows = torch.from_numpy(
                numpy.repeat(starts[seqs] - local_starts, lengths) + numpy.arange(int(lengths.sum()))
            )
            out[rows] = self._ragged_pass(flat.index_select(0, rows), local_starts, lengths, run)
        return out

    def _ragged_pass(self, X, seq_starts, seq_lengths, run, row_seq=None) -> torch.Tensor:
        """Encode the sequences of X's rows, sorted longest first, through
        one ragged loop per layer. Between layers the rows stay in X's
        order; each layer gathers its input into the loop's packed order
        (for the right-to-left direction, each sequence reversed inside its
        own length) and its output back.

        X (torch.Tensor): (rows, input) rows of exactly these sequences.
        seq_starts (numpy.ndarray): Each sequence's first row in X.
        seq_lengths (numpy.ndarray): Each sequence's length, descending.
        run: The ragged loop (``fused_gru_ragged`` or the Elman one).
        row_seq (Optional[torch.Tensor]): Each row's sequence, for locked
            dropout in training.
        RETURNS (torch.Tensor): (rows, hidden_size), in X's order.
        """
        K = self.dirs
        n_rows = X.shape[0]
        T = int(seq_lengths[0])
        # Sequences still running at each step, longest first.
        ended = numpy.cumsum(numpy.bincount(seq_lengths, minlength=T + 1))
        layout = StepLayout(len(seq_lengths) - ended[:T], K)
        t, seq = layout.row_steps, layout.row_seqs
        sources = [seq_starts[seq] + t]
        if K == 2:
            sources.append(seq_starts[seq] + seq_lengths[seq] - 1 - t)
        gather = torch.from_numpy(numpy.concatenate(sources))
        # Row of the step-layout output for each (row of X, direction).
        back = numpy.empty((n_rows, K), dtype="int64")
        back[numpy.stack(sources).T, numpy.arange(K)] = layout.step_rows().T
        back = torch.from_numpy(back.reshape(-1))
        X = self._drop(X, self.input_dropout, row_seq)
        for i in range(self.depth):
            weights = [self._rnn_weights(self.fwd[i])]
            if K == 2:
                weights.append(self._rnn_weights(self.bwd[i]))
            packed = X.index_select(0, gather).view(K, layout.N, X.shape[-1])
            Y = run(packed, weights, layout)
            Y = Y.index_select(0, back).view(n_rows, K * Y.shape[-1])
            X = self._after_layer(i, X, Y, row_seq)
        return self._drop(X, self.output_dropout, row_seq)

    def forward_padded(self, X: torch.Tensor, lengths: List[int]) -> torch.Tensor:
        """Encode a padded, batch-first tensor whose lengths are sorted
        longest first.

        X (torch.Tensor): (batch, time, input_size).
        lengths (List[int]): Real length of each row, descending.
        RETURNS (torch.Tensor): (batch, time, hidden_size); padded positions
            hold unspecified values.
        """
        chunk = self.inference_chunk
        if chunk and X.shape[1] > chunk and self._inference():
            return self._forward_padded_chunked(X, lengths, chunk)
        method = self.method
        if method == "auto":
            # "reverse" on CUDA too: on an H100, cuDNN over packed batches
            # took 7x the time of the padded calls, and packed outputs of a
            # doc differed with its batch mates by up to 3e-4
            # (benchmarks/encoder_speed.py --gpu-id 0).
            method = "reverse"
        reverse_index = None
        if self.bidirectional:
            reverse_index = _reverse_index(lengths, X.shape[1], X.device)
        X = self._drop(X, self.input_dropout)
        for i in range(self.depth):
            if self.bidirectional:
                X_rev = _reverse_within(X, reverse_index)
                run = None if method == "packed" else self._fused_loop(self.fwd[i], X, both=True)
                if run is not None:
                    # Both directions in one loop: the loop's cost is mostly
                    # per op, not per row.
                    (Y, Y_rev), _ = run(
                        [X, X_rev],
                        [None, None],
                        [self._rnn_weights(self.fwd[i]), self._rnn_weights(self.bwd[i])],
                    )
                else:
                    Y = self._run_direction(self.fwd[i], X, lengths, method)
                    Y_rev = self._run_direction(self.bwd[i], X_rev, lengths, method)
                Y = torch.cat([Y, _reverse_within(Y_rev, reverse_index)], dim=-1)
            else:
                Y = self._run_direction(self.fwd[i], X, lengths, method)
            X = self._after_layer(i, X, Y)
        return self._drop(X, self.output_dropout)

    def _forward_padded_chunked(
        self, X: torch.Tensor, lengths: List[int], chunk: int
    ) -> torch.Tensor:
        """``forward_padded`` in inference, ``chunk`` time steps per call.

        Each layer and direction runs over the chunks in order, passing its
        final state into the next call: the left-to-right direction from the
        start, the right-to-left one over each sequence reversed inside its
        own length (so from its end), gathering and scattering one chunk at
        a time. Padding trails every sequence in both directions, so valid
        positions never see it, exactly as in the unchunked pass. Dropout is
        off (inference), so only residual and layer norm follow each layer;
        both act position by position and are applied chunk by chunk too.
        """
        B, T = X.shape[0], X.shape[1]
        per_dir = self.hidden_size // self.dirs
        L = to_device(numpy.asarray(lengths, dtype="int64"), X.device).view(B, 1)
        spans = [(t0, min(t0 + chunk, T)) for t0 in range(0, T, chunk)]
        for i in range(self.depth):
            Y = None
            state = None
            for t0, t1 in spans:
                y, state = self._call_rnn(self.fwd[i], X[:, t0:t1], state)
                if Y is None:
                    Y = y.new_empty((B, T, self.hidden_size))
                Y[:, t0:t1, :per_dir] = y
            if self.bidirectional:
                state = None
                Y_bwd = Y[:, :, per_dir:]
                for s0, s1 in spans:
                    s = torch.arange(s0, s1, device=X.device).view(1, -1)
                    index = torch.where(s < L, L - 1 - s, s)
                    x = torch.gather(X, 1, index.unsqueeze(-1).expand(-1, -1, X.shape[-1]))
                    y, state = self._call_rnn(self.bwd[i], x, state)
                    Y_bwd.scatter_(1, index.unsqueeze(-1).expand(-1, -1, per_dir), y)
            del state
            if (self.residual and X.shape[-1] == Y.shape[-1]) or len(self.norms):
                Z = None
                for t0, t1 in spans:
                    z = self._after_layer(i, X[:, t0:t1], Y[:, t0:t1])
                    if Z is None:
                        # In place when the dtype allows (always in float32).
                        Z = Y if z.dtype == Y.dtype else z.new_empty((B, T, self.hidden_size))
                    Z[:, t0:t1] = z
                Y = Z
            X = Y
        return X

    def forward_stream(
        self, X: torch.Tensor, state: Optional[List] = None
    ) -> Tuple[torch.Tensor, List]:
        """Run a left-to-right stack over a continuous stream, carrying state.

        Meant for language models with truncated backpropagation through
        time: pass the returned state into the next window (detached).

        X (torch.Tensor): (batch, time, input_size).
        state (Optional[List]): Per-layer hidden state from the previous call.
        RETURNS (Tuple[torch.Tensor, List]): Outputs and the new state.
        """
        if self.bidirectional:
            raise ValueError(
                "RNNStack.forward_stream needs a one-directional stack: a "
                "right-to-left direction cannot carry state across windows"
            )
        new_state = []
        X = self._drop(X, self.input_dropout)
        for i in range(self.depth):
            hx = state[i] if state is not None else None
            Y, h = self._call_rnn(self.fwd[i], X, hx)
            new_state.append(h)
            X = self._after_layer(i, X, Y)
        return self._drop(X, self.output_dropout), new_state

    # -- helpers ----------------------------------------------------------

    def _run_direction(self, rnn, X, lengths, method):
        if method == "packed" and lengths[-1] != X.shape[1]:
            packed = nn.utils.rnn.pack_padded_sequence(
                X, torch.as_tensor(lengths), batch_first=True, enforce_sorted=True
            )
            Y, _ = self._call_rnn(rnn, packed)
            Y, _ = nn.utils.rnn.pad_packed_sequence(
                Y, batch_first=True, total_length=X.shape[1]
            )
            return Y
        Y, _ = self._call_rnn(rnn, X)
        return Y

    def _fused_loop(self, rnn, X, both: bool = False):
        # The fused loop for this module and input, or None. One direction
        # alone is only faster with autograd on: PyTorch's own inference
        # loops run in C++.
        if not self.fused_cpu_kernels:
            return None
        if not (both or torch.is_grad_enabled()):
            return None
        if fused_gru_applies(rnn, X):
            return fused_gru_directions
        if fused_elman_applies(rnn, X):
            return functools.partial(fused_elman_directions, nonlinearity=rnn.nonlinearity)
        return None

    def ragged_loop_applies(self, flat: torch.Tensor, lengths: Sequence[int]) -> bool:
        """Whether ``forward(flat, lengths)`` runs the batch through one
        ragged fused CPU loop per layer (no padding, no buckets) rather
        than through length buckets.

        flat (torch.Tensor): (sum(lengths), input_size) rows, as for
            ``forward``.
        lengths (Sequence[int]): Length of each sequence.
        RETURNS (bool): True on the CPU for GRU and Elman stacks with
            ``fused_cpu_kernels`` and ``ragged_cpu_loop`` on, in float32 or
            float64 outside autocast, unless ``method="packed"`` or the
            batch is long enough for chunked inference.
        """
        longest = max((int(n) for n in lengths), default=0)
        return longest > 0 and self._ragged_loop(flat, longest) is not None

    def _ragged_loop(self, flat: torch.Tensor, longest: int):
        # The ragged fused loop for this stack and batch, or None. Where a
        # fused loop would run each bucket, one ragged loop runs them all;
        # "packed" asks for PyTorch's packed kernels, and sequences long
        # enough to be encoded in chunks keep the chunked path.
        if self.method == "packed" or not (self.fused_cpu_kernels and self.ragged_cpu_loop):
            return None
        if self._inference() and 0 < self.inference_chunk < longest:
            return None
        # Unlike a padded fused call, the ragged loop beats PyTorch's own
        # C++ loop in inference even for one direction (1.4-1.8x,
        # benchmarks/encoder_speed.py --directions 1 --inference).
        if self._fused_loop(self.fwd[0], flat.unsqueeze(0), both=True) is None:
            return None
        if self.cell == "gru":
            return fused_gru_ragged
        return functools.partial(fused_elman_ragged, nonlinearity=self.fwd[0].nonlinearity)

    def _rnn_weights(self, rnn) -> List[torch.Tensor]:
        # The module's weights in its _flat_weights order, with weight drop
        # applied as on PyTorch's path (same masks for the same seed).
        rnn._update_flat_weights()
        if self.training and self.weight_drop > 0:
            return dropconnect_weights(rnn, self.weight_drop)
        return list(rnn._flat_weights)

    def _call_rnn(self, rnn, X, hx=None):
        run = self._fused_loop(rnn, X)
        if run is not None:
            (Y,), (h,) = run([X], [hx], [self._rnn_weights(rnn)])
            return Y, h
        if not (self.training and self.weight_drop > 0):
            return rnn(X, hx)
        # Run the module on a weight list holding a dropped copy of the
        # recurrent matrix. Only the list torch hands to its kernel is
        # swapped: the named parameters stay, so nn.RNNBase sees no change and
        # never re-flattens (functional_call would make it copy every weight
        # into a new cuDNN buffer, in place, twice per call). The stored
        # parameter is never modified; gradients reach it through the mask.
        # Let the module refresh its list first if its parameters were
        # replaced, or its forward would refresh it over ours.
        rnn._update_flat_weights()
        saved = rnn._flat_weights
        rnn._flat_weights = dropconnect_weights(rnn, self.weight_drop)
        try:
            return rnn(X, hx)
        finally:
            rnn._flat_weights = saved

    def _drop(self, X, rate, row_seq=None):
        # X: (batch, time, width), or (rows, width) rows of the sequences
        # that ``row_seq`` names, one per row.
        if not self.training or rate <= 0:
            return X
        if not self.locked_dropout:
            return nn.functional.dropout(X, p=rate, training=True)
        # One mask per sequence, shared by every time step.
        if row_seq is None:
            mask = X.new_empty((X.shape[0], 1, X.shape[2])).bernoulli_(1 - rate)
        else:
            n_seqs = int(row_seq[-1]) + 1 if len(row_seq) else 0
            mask = X.new_empty((n_seqs, X.shape[-1])).bernoulli_(1 - rate)[row_seq]
        return X * mask / (1 - rate)

    def _after_layer(self, i, X, Y, row_seq=None):
        if self.residual and X.shape[-1] == Y.shape[-1]:
            Y = Y + X
        if len(self.norms):
            Y = self.norms[i](Y)
        if i < self.depth - 1:
            Y = self._drop(Y, self.dropout_rate, row_seq)
        return Y


def dropconnect_weights(rnn: nn.RNNBase, rate: float) -> List[torch.Tensor]:
    """The weights of a one-layer RNN module, in its ``_flat_weights`` order,
    with DropConnect applied to the hidden-to-hidden matrix.

    On CUDA the module's parameters are views of one cuDNN weight buffer;
    the returned weights are then views of one new buffer with the same
    layout, so cuDNN runs its fused kernel on them without warning about
    non-contiguous weights. Elsewhere they are separate tensors.

    rnn (nn.RNNBase): A single-layer, one-directional LSTM, GRU or RNN.
    rate (float): The dropout rate of the recurrent weights.
    RETURNS (List[torch.Tensor]): Differentiable weights for the kernel.
    """
    weights = list(rnn._flat_weights)
    i = rnn._flat_weights_names.index("weight_hh_l0")
    weights[i] = nn.functional.dropout(weights[i], p=rate, training=True)
    layout = _shared_buffer_layout(rnn._flat_weights)
    if layout is None:
        return weights
    size, offsets = layout
    pieces: List[torch.Tensor] = []
    end = 0
    for j in sorted(range(len(weights)), key=offsets.__getitem__):
        if offsets[j] > end:
            pieces.append(weights[j].new_zeros(offsets[j] - end))
        pieces.append(weights[j].reshape(-1))
        end = offsets[j] + weights[j].numel()
    if size > end:
        pieces.append(weights[0].new_zeros(size - end))
    buffer = torch.cat(pieces)
    return [
        buffer[offsets[j] : offsets[j] + w.numel()].view(w.shape)
        for j, w in enumerate(weights)
    ]


def _shared_buffer_layout(weights: Sequence[torch.Tensor]):
    # (buffer size, element offset of each weight) when all weights are
    # contiguous, non-overlapping views of one storage, else None.
    first = weights[0]
    storage = first.untyped_storage()
    if any(
        w.untyped_storage().data_ptr() != storage.data_ptr() or not w.is_contiguous()
        for w in weights
    ):
        return None
    spans = sorted((w.storage_offset(), w.numel()) for w in weights)
    if any(a + n > b for (a, n), (b, _) in zip(spans, spans[1:])):
        return None
    size = storage.nbytes() // first.element_size()
    return size, [w.storage_offset() for w in weights]


def check_rnn_settings(
    *,
    input_size: int,
    hidden_size: int,
    depth: int,
    cell: str,
    bidirectional: bool,
    dropout: float,
    init: str = "default",
    method: str = "auto",
) -> None:
    """Refuse settings that cannot work, with a message that says why."""
    if cell not in CELLS:
        raise ValueError(f"Unknown RNN cell {cell!r}: choose one of {', '.join(CELLS)}")
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}: choose one of {', '.join(INITS)}")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if input_size < 1 or hidden_size < 1:
        raise ValueError(
            f"RNN widths must be positive, got input {input_size}, output {hidden_size}"
        )
    if depth < 1:
        raise ValueError(f"RNN depth must be at least 1, got {depth}")
    if bidirectional and hidden_size % 2:
        raise ValueError(
            f"A bidirectional RNN splits its width between two directions, so "
            f"the width must be even; got {hidden_size}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"RNN dropout must be in [0, 1), got {dropout}")


def plan_buckets(sorted_lengths: numpy.ndarray, overhead: float) -> List[Tuple[int, int]]:
    """Split lengths sorted longest first into contiguous buckets that minimise
    sum(bucket max length * (overhead + bucket size)), by dynamic programming.

    sorted_lengths (numpy.ndarray): Positive lengths, descending.
    overhead (float): Per-step cost of a call, in sequence units.
    RETURNS (List[Tuple[int, int]]): (start, end) index pairs.
    """
    n = len(sorted_lengths)
    if n == 0:
        return []
    if overhead <= 0 or n == 1:
        return [(0, n)]
    if n > 1024:
        # Keep the quadratic search cheap on huge batches: plan chunks apart.
        plans = []
        for start in range(0, n, 1024):
            chunk = plan_buckets(sorted_lengths[start : start + 1024], overhead)
            plans.extend((start + a, start + b) for a, b in chunk)
        return plans
    L = sorted_lengths.astype("float64")
    best = numpy.zeros(n + 1)
    back = numpy.zeros(n + 1, dtype="int64")
    for end in range(1, n + 1):
        starts = numpy.arange(end)
        cost = best[:end] + L[:end] * (overhead + (end - starts))
        k = int(numpy.argmin(cost))
        best[end] = cost[k]
        back[end] = k
    buckets = []
    end = n
    while end > 0:
        buckets.append((int(back[end]), end))
        end = int(back[end])
    return buckets[::-1]


def _make_cell(cell: str, n_in: int, n_hidden: int) -> nn.Module:
    if cell == "lstm":
        return nn.LSTM(n_in, n_hidden, 1, batch_first=True)
    if cell == "gru":
        return nn.GRU(n_in, n_hidden, 1, batch_first=True)
    nonlinearity = "tanh" if cell == "rnn_tanh" else "relu"
    return nn.RNN(n_in, n_hidden, 1, nonlinearity=nonlinearity, batch_first=True)


def _n_gates(cell: str) -> int:
    return {"lstm": 4, "gru": 3}.get(cell, 1)


class _GatherRows(torch.autograd.Function):
    """``source[index]`` for an index that names every row of ``source`` at
    most once, except the last row (the zero padding row), which it may name
    any number of times.

    Autograd's own backward for ``source[index]`` must allow any row to
    repeat, so on CUDA it sorts the index and accumulates: 3.8 ms of a
    17.8 ms textcat training step's GPU time on an H100
    (benchmarks/profile_textcat.py --torch-profiler). Here the gradient is a
    plain copy into each row; the padding row's is dropped.
    """

    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = source.shape[0]
        flat = source.index_select(0, index.reshape(-1))
        return flat.view(*index.shape, source.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        d_source = grad.new_zeros((ctx.n_rows, grad.shape[-1]))
        # Only the padding row can be written more than once.
        d_source.index_copy_(0, index.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        d_source[-1] = 0
        return d_source, None


def _reverse_index(lengths: List[int], T: int, device) -> torch.Tensor:
    steps = numpy.arange(T)
    L = numpy.asarray(lengths)[:, None]
    index = numpy.where(steps[None, :] < L, L - 1 - steps[None, :], steps[None, :])
    return to_device(index, device)


def _reverse_within(X: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    expanded = index.unsqueeze(-1).expand(-1, -1, X.shape[-1])
    return torch.gather(X, 1, expanded)

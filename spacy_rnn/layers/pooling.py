"""Pool each doc's token vectors into one vector, empty docs included."""
from typing import Callable, List, Tuple

import numpy
import torch
from thinc.api import Model, ParametricAttention_v2, chain, list2ragged, reduce_sum
from thinc.types import Floats2d
from thinc.util import torch2xp, xp2torch

from ..torch_modules.transfer import to_device

InT = List[Floats2d]
OutT = Floats2d

POOLINGS = ("mean", "max", "last", "attention")


def rnn_pooling(mode: str, width: int) -> Model[InT, OutT]:
    """Pool a list of (n_tokens, width) matrices into (n_docs, out_width).

    "mean" and "max" give ``width`` columns. "last" gives ``2 * width``: the
    last token's vector then the first token's, so that a bidirectional
    encoder contributes the final state of both directions (the left-to-right
    half of the last row and the right-to-left half of the first row).
    "attention" is Thinc's parametric attention followed by a sum. An empty
    doc pools to zeros.
    """
    if mode not in POOLINGS:
        raise ValueError(f"Unknown pooling {mode!r}: choose one of {', '.join(POOLINGS)}")
    if mode == "attention":
        model = chain(list2ragged(), ParametricAttention_v2(nO=width), reduce_sum())
        model.attrs["pool_width"] = width
        return model
    out_width = 2 * width if mode == "last" else width
    return Model(
        f"pool_{mode}",
        forward,
        attrs={"mode": mode, "pool_width": out_width},
        dims={"nI": width, "nO": out_width},
    )


def forward(model: Model[InT, OutT], Xs: InT, is_train: bool) -> Tuple[OutT, Callable]:
    # One vectorised reduction over the concatenated batch: a per-doc Python
    # loop cost ~10 us per doc, noticeable next to the encoder on short docs.
    mode = model.attrs["mode"]
    ops = model.ops
    xp = ops.xp
    nI = model.get_dim("nI")
    nO = model.get_dim("nO")
    lengths_list = [int(X.shape[0]) for X in Xs]
    lengths = ops.asarray1i(lengths_list)
    total = sum(lengths_list)
    Y = ops.alloc2f(len(Xs), nO)
    if total == 0:
        return Y, lambda dY: [ops.alloc2f(n, nI) for n in lengths_list]
    flat = ops.flatten(Xs)
    nonempty = lengths > 0
    all_nonempty = bool(nonempty.all())
    if mode == "mean":
        # Both give zeros for empty docs.
        if xp is numpy:
            Y = ops.reduce_mean(flat, lengths)
        else:
            Y = _segment_means(flat, lengths_list)
        which = None
    elif mode == "max":
        # reduce_max refuses empty sequences: reduce the others only.
        kept = lengths if all_nonempty else lengths[nonempty]
        maxes, which = ops.reduce_max(flat, kept)
        if all_nonempty:
            Y = maxes
        else:
            Y[nonempty] = maxes
    else:
        ends = xp.cumsum(lengths) - 1
        starts = ends - lengths + 1
        ends, starts = ends[nonempty], starts[nonempty]
        Y[nonempty, :nI] = flat[ends]
        Y[nonempty, nI:] = flat[starts]
        which = None

    def backprop(dY: OutT) -> InT:
        if mode == "mean":
            dX = ops.backprop_reduce_mean(ops.as_contig(dY), lengths)
        elif mode == "max":
            d_kept = dY if all_nonempty else dY[nonempty]
            dX = ops.backprop_reduce_max(ops.as_contig(d_kept), which, kept)
        else:
            dX = ops.alloc2f(total, nI)
            # Separate statements: a one-token doc has start == end, and the
            # two contributions must add up.
            dX[ends] += dY[nonempty, :nI]
            dX[starts] += dY[nonempty, nI:]
        return ops.unflatten(dX, lengths_list)

    return Y, backprop


def _segment_means(flat, lengths: List[int]):
    # Thinc's CUDA reduce_mean gives each doc one thread, which adds up the
    # doc's rows one after the other: 5.5 ms of a 17.5 ms training step on an
    # H100 for 32 reviews (up to 4,000 tokens each), and 9.8 ms per 256 docs
    # in inference (benchmarks/profile_textcat.py --torch-profiler). Prefix
    # sums along each column are parallel; float64 keeps the difference of
    # two long prefix sums as exact as a float32 sum of the doc alone.
    X = xp2torch(flat)
    lengths_np = numpy.asarray(lengths, dtype="int64")
    ends = numpy.cumsum(lengths_np)
    starts = ends - lengths_np
    sums = torch.cumsum(X.t().to(torch.float64).contiguous(), dim=1)
    sums = torch.cat([sums.new_zeros((sums.shape[0], 1)), sums], dim=1)
    per_doc = sums.index_select(1, to_device(ends, X.device)) - sums.index_select(
        1, to_device(starts, X.device)
    )
    counts = to_device(numpy.maximum(lengths_np, 1).astype("float64"), X.device)
    means = (per_doc / counts).t().to(X.dtype).contiguous()
    return torch2xp(means)

"""Pool each doc's token vectors into one vector, empty docs included."""
from typing import Callable, List, Tuple

from thinc.api import Model, ParametricAttention_v2, chain, list2ragged, reduce_sum
from thinc.types import Floats2d

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
    mode = model.attrs["mode"]
    ops = model.ops
    nI = model.get_dim("nI")
    nO = model.get_dim("nO")
    Y = ops.alloc2f(len(Xs), nO)
    argmaxes: List = []
    for i, X in enumerate(Xs):
        n = X.shape[0]
        if n == 0:
            argmaxes.append(None)
            continue
        if mode == "mean":
            Y[i] = X.mean(axis=0)
        elif mode == "max":
            which = X.argmax(axis=0)
            argmaxes.append(which)
            Y[i] = X.max(axis=0)
        else:
            Y[i, :nI] = X[n - 1]
            Y[i, nI:] = X[0]

    def backprop(dY: OutT) -> InT:
        dXs = []
        for i, X in enumerate(Xs):
            n = X.shape[0]
            dX = ops.alloc2f(n, nI)
            if n == 0:
                dXs.append(dX)
                continue
            if mode == "mean":
                dX += dY[i] / n
            elif mode == "max":
                dX[argmaxes[i], ops.xp.arange(nI)] = dY[i]
            else:
                dX[n - 1] += dY[i, :nI]
                dX[0] += dY[i, nI:]
            dXs.append(dX)
        return dXs

    return Y, backprop

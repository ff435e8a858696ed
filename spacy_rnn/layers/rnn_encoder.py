"""Thinc layer that runs an ``RNNStack`` over a list of per-doc matrices."""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from thinc.api import Model, PyTorchGradScaler
from thinc.types import ArgsKwargs, Floats2d
from thinc.util import torch2xp, xp2torch

from ..serialization import deserialize_torch_module, serialize_torch_module
from ..torch_modules.rnn_stack import RNNStack
from .torch_shim import InPlacePyTorchShim

InT = List[Floats2d]
OutT = List[Floats2d]


def RNNEncoder(
    width: int,
    depth: int = 1,
    cell: str = "lstm",
    bidirectional: bool = True,
    dropout: float = 0.0,
    residual: bool = False,
    layer_norm: bool = False,
    init: str = "orthogonal",
    method: str = "auto",
    locked_dropout: bool = False,
    input_dropout: float = 0.0,
    output_dropout: float = 0.0,
    weight_drop: float = 0.0,
    mixed_precision: bool = False,
    grad_scaler: Optional[PyTorchGradScaler] = None,
) -> Model[InT, OutT]:
    """Contextual encoder: one (n_tokens, width) matrix in and out per doc.

    The torch module is built here, from the arguments alone, so that a saved
    pipeline always has a module to load its weights into.
    """
    module = RNNStack(
        width,
        width,
        depth=depth,
        cell=cell,
        bidirectional=bidirectional,
        dropout=dropout,
        residual=residual,
        layer_norm=layer_norm,
        init=init,
        method=method,
        locked_dropout=locked_dropout,
        input_dropout=input_dropout,
        output_dropout=output_dropout,
        weight_drop=weight_drop,
    )
    return Model(
        "rnn_encoder",
        forward,
        init=init_encoder,
        dims={"nI": width, "nO": width},
        attrs={
            "cell": cell,
            "bidirectional": bidirectional,
            "depth": depth,
        },
        shims=[
            InPlacePyTorchShim(
                module,
                mixed_precision=mixed_precision,
                grad_scaler=grad_scaler,
                serialize_model=serialize_torch_module,
                deserialize_model=deserialize_torch_module,
            )
        ],
    )


def forward(model: Model[InT, OutT], Xs: InT, is_train: bool) -> Tuple[OutT, Callable]:
    shim = model.shims[0]
    nI = model.get_dim("nI")
    nO = model.get_dim("nO")
    lengths = [int(X.shape[0]) for X in Xs]
    if sum(lengths) == 0:
        # Nothing to encode; keep torch out of it so empty batches cost nothing.
        Ys = [model.ops.alloc2f(0, nO) for _ in Xs]
        return Ys, lambda dYs: [model.ops.alloc2f(0, nI) for _ in dYs]
    if not is_train and len(Xs) == 1:
        # One doc in inference (a long doc, typically): encode its matrix
        # itself rather than a flattened copy of it.
        flat = model.ops.xp.ascontiguousarray(Xs[0])
    else:
        flat = model.ops.flatten(Xs, pad=0)
    if flat.shape[1] != nI:
        raise ValueError(
            f"spacy-rnn.RNNEncoder: expected {nI}-wide input vectors, got "
            f"{flat.shape[1]}; set the embedding width to the encoder width"
        )
    Xtorch = xp2torch(flat, requires_grad=is_train, device=shim.device)
    Ytorch, torch_backprop = shim(ArgsKwargs(args=(Xtorch, lengths), kwargs={}), is_train)
    if Ytorch.dtype != torch.float32:
        # Mixed precision computes in half; the rest of the pipeline is float32.
        Ytorch = Ytorch.float()
    Y = torch2xp(Ytorch, ops=model.ops)
    Ys = model.ops.unflatten(Y, lengths)

    def backprop(dYs: OutT) -> InT:
        dY_xp = model.ops.flatten(dYs, pad=0)
        # The output is checked here rather than in the forward pass: both
        # checks then cost one wait for the GPU per step instead of two, and
        # still come before torch's backward and any optimiser step.
        _check_finite(model, {"output": Y, "gradient": dY_xp})
        dY = xp2torch(dY_xp, device=shim.device)
        grads = torch_backprop(
            ArgsKwargs(args=((Ytorch,),), kwargs={"grad_tensors": (dY,)})
        )
        dX = grads.args[0]
        if dX is None:
            return [model.ops.alloc2f(n, nI) for n in lengths]
        return model.ops.unflatten(torch2xp(dX, ops=model.ops), lengths)

    return Ys, backprop


def init_encoder(
    model: Model[InT, OutT], X: Optional[InT] = None, Y: Optional[OutT] = None
) -> None:
    # The module already exists; only check that the data fits it.
    nI = model.get_dim("nI")
    if X is not None:
        for x in X:
            if x.ndim == 2 and x.shape[0] and x.shape[1] != nI:
                raise ValueError(
                    f"spacy-rnn.RNNEncoder: width is {nI} but the embedding "
                    f"produces {x.shape[1]}-wide vectors; make them match"
                )


def _check_finite(model: Model, arrays: Dict[str, Any]) -> None:
    # Raising here, before any optimizer step, stops `spacy train` with the
    # weights still intact, so the model-last it saves on the way out is
    # the last good one rather than a model full of NaNs.
    xp = model.ops.xp
    flags = xp.stack([xp.isfinite(a).all() for a in arrays.values()])
    # One device-to-host read for all of them.
    finite = flags.get() if hasattr(flags, "get") else flags
    bad = [what for what, ok in zip(arrays, finite.tolist()) if not ok]
    if bad:
        raise FloatingPointError(
            f"spacy-rnn.RNNEncoder: non-finite values (NaN or inf) in the "
            f"{' and '.join(bad)} during training; stopping before the weights "
            f"are corrupted. Check the training data (e.g. NaN in doc.cats) or "
            f"lower the learning rate."
        )

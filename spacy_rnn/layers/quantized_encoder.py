"""Int8 inference encoder: an ``RNNStack`` whose LSTM / GRU cells run with
dynamically quantised weights (int8 weights, float activations), on CPU.

Storage stays safetensors-only. The packed int8 weights that PyTorch's
quantised modules hold are opaque TorchScript objects that only a pickle can
save, so they are never written: each weight matrix is stored as a plain
``int8`` tensor plus one float32 scale per output row (symmetric, zero point
0), and the packed weights are rebuilt from those on load. Rebuilding is
exact: the stored integers are the integers the model computes with.

The deserialiser also accepts the float weights of ``spacy-rnn.RNNEncoder.v1``
and quantises them on the spot, which is how ``python -m spacy_rnn quantize``
turns a float pipeline into an int8 one: it swaps the architecture name in
the config and loads the float weights into the new model.
"""
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
from safetensors.torch import save as safetensors_save
from thinc.api import Model, PyTorchShim
from thinc.types import Floats2d

from ..serialization import _looks_like_pickle, load_state_bytes, load_state_strict
from ..torch_modules.rnn_stack import RNNStack
from .rnn_encoder import init_encoder

InT = List[Floats2d]
OutT = List[Floats2d]

INT8_FORMAT_TAG = "spacy-rnn-int8-safetensors"
QUANTIZABLE_CELLS = ("lstm", "gru")
# Suffixes of the two tensors that store one int8 weight matrix.
INT8_SUFFIX = ".int8"
SCALE_SUFFIX = ".scale"


def QuantizedRNNEncoder(
    width: int,
    depth: int = 1,
    cell: str = "lstm",
    bidirectional: bool = True,
    dropout: float = 0.0,
    residual: bool = False,
    layer_norm: bool = False,
    init: str = "orthogonal",
    method: str = "auto",
) -> Model[InT, OutT]:
    """Inference-only twin of ``RNNEncoder`` with int8 recurrent weights."""
    settings = dict(
        input_size=width,
        hidden_size=width,
        depth=depth,
        cell=cell,
        bidirectional=bidirectional,
        dropout=dropout,
        residual=residual,
        layer_norm=layer_norm,
        init=init,
        method=method,
    )
    module = quantize_stack(RNNStack(**settings), settings)
    return Model(
        "rnn_encoder_int8",
        forward,
        init=init_encoder,
        dims={"nI": width, "nO": width},
        attrs={"cell": cell, "bidirectional": bidirectional, "depth": depth, "quantized": "int8"},
        shims=[
            PyTorchShim(
                module,
                serialize_model=serialize_quantized_stack,
                deserialize_model=deserialize_quantized_stack,
            )
        ],
    )


def forward(model: Model[InT, OutT], Xs: InT, is_train: bool) -> Tuple[OutT, Callable]:
    if is_train:
        raise ValueError(
            "spacy-rnn.QuantizedRNNEncoder.v1 is for inference only: int8 "
            "weights cannot be trained. Train or fine-tune the float pipeline "
            "and run `python -m spacy_rnn quantize` again."
        )
    module = model.shims[0]._model
    nI = model.get_dim("nI")
    nO = model.get_dim("nO")
    lengths = [int(X.shape[0]) for X in Xs]
    if sum(lengths) == 0:
        return [model.ops.alloc2f(0, nO) for _ in Xs], _no_backprop
    flat = model.ops.flatten(Xs, pad=0)
    if flat.shape[1] != nI:
        raise ValueError(
            f"spacy-rnn.QuantizedRNNEncoder: expected {nI}-wide input vectors, "
            f"got {flat.shape[1]}"
        )
    # Quantised kernels exist for CPU only; go through numpy so that a
    # pipeline running on GPU ops still works.
    X = torch.from_numpy(numpy.ascontiguousarray(model.ops.to_numpy(flat), dtype="float32"))
    _keep_on_cpu(module)
    with torch.inference_mode():
        Y = module(X, lengths)
    Ys = model.ops.unflatten(model.ops.asarray2f(Y.numpy()), lengths)
    return Ys, _no_backprop


def _no_backprop(dYs):
    raise ValueError("spacy-rnn.QuantizedRNNEncoder.v1 has no backward pass")


def _keep_on_cpu(module: torch.nn.Module) -> None:
    for tensor in module.parameters():
        if tensor.device.type != "cpu":
            module.to("cpu")
            return


# -- quantisation -------------------------------------------------------


def quantize_rows(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation.

    weight (torch.Tensor): (rows, cols) float weights.
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): int8 values and one float32
        scale per row, with ``weight ~= values * scale[:, None]``.
    """
    w = weight.detach().float().cpu()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    values = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values, scale.float()


def _to_qtensor(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # Multiplying back and re-quantising with the same scales gives back the
    # same integers, so this rebuilds the stored weights exactly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(
            values.float() * scale[:, None],
            scale.double(),
            torch.zeros(scale.shape[0], dtype=torch.long),
            0,
            torch.qint8,
        )


def _empty_quantized_cell(float_cell: torch.nn.Module) -> torch.nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    cls = nnqd.LSTM if isinstance(float_cell, torch.nn.LSTM) else nnqd.GRU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(
            float_cell.input_size, float_cell.hidden_size, 1, True, True, 0.0, False,
            dtype=torch.qint8,
        )


def _set_cell(qcell: torch.nn.Module, weights: Dict[str, Tuple], biases: Dict) -> None:
    state = {name: _to_qtensor(*vs) for name, vs in weights.items()}
    state.update({name: b.float().cpu() for name, b in biases.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qcell.set_weight_bias(state)


def _is_quantized_cell(cell: torch.nn.Module) -> bool:
    return type(cell).__module__.startswith("torch.ao.nn.quantized")


def _cells(stack: RNNStack):
    for prefix in ("fwd", "bwd"):
        for i, cell in enumerate(getattr(stack, prefix)):
            yield prefix, i, cell


def quantize_stack(stack: RNNStack, settings: Optional[Dict] = None) -> RNNStack:
    """Replace the LSTM / GRU cells of a float stack by int8 dynamic ones, in
    place. Plain RNN cells have no int8 kernel in PyTorch and stay float.

    stack (RNNStack): A float stack.
    settings (Optional[Dict]): Constructor arguments, kept for reloading.
    RETURNS (RNNStack): The same stack, quantised and in eval mode.
    """
    stack = stack.cpu().eval()
    if settings is not None:
        stack.spacy_rnn_settings = dict(settings)
    for prefix, i, cell in list(_cells(stack)):
        if stack.cell not in QUANTIZABLE_CELLS or _is_quantized_cell(cell):
            continue
        weights, biases = {}, {}
        for name, param in cell.named_parameters():
            if name.startswith("weight"):
                weights[name] = quantize_rows(param)
            else:
                biases[name] = param.detach()
        qcell = _empty_quantized_cell(cell)
        _set_cell(qcell, weights, biases)
        getattr(stack, prefix)[i] = qcell
    return stack


def quantized_state(stack: RNNStack) -> Dict[str, torch.Tensor]:
    """Plain tensors that describe a quantised stack completely.

    stack (RNNStack): A stack returned by ``quantize_stack``.
    RETURNS (Dict[str, torch.Tensor]): int8 weights, float32 scales and the
        float tensors (biases, layer norms, unquantised cells).
    """
    state: Dict[str, torch.Tensor] = {}
    for prefix, i, cell in _cells(stack):
        if not _is_quantized_cell(cell):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, qweight in cell.get_weight().items():
                store_int8_weight(state, f"{prefix}.{i}.{name}", qweight)
            for name, bias in cell.get_bias().items():
                state[f"{prefix}.{i}.{name}"] = bias.detach().float().contiguous().clone()
    for name, tensor in list(stack.named_parameters()) + list(stack.named_buffers()):
        state[name] = tensor.detach().cpu().contiguous().clone()
    return state


def store_int8_weight(state: Dict[str, torch.Tensor], key: str, qweight: torch.Tensor) -> None:
    """Add a per-row quantised matrix to ``state`` in the stored layout:
    ``key + INT8_SUFFIX`` (int8 values) and ``key + SCALE_SUFFIX`` (float32
    scales).

    state (Dict[str, torch.Tensor]): The tensors to be saved.
    key (str): The weight's name.
    qweight (torch.Tensor): A per-channel quantised tensor.
    """
    state[key + INT8_SUFFIX] = qweight.int_repr().contiguous().clone()
    state[key + SCALE_SUFFIX] = qweight.q_per_channel_scales().float().contiguous()


def serialize_quantized_stack(module: RNNStack) -> bytes:
    """Serialise a quantised stack as safetensors bytes (no pickles).

    module (RNNStack): The quantised stack.
    RETURNS (bytes): A safetensors blob.
    """
    return save_int8_state(quantized_state(module))


def save_int8_state(state: Dict[str, torch.Tensor]) -> bytes:
    """Write int8 weights, scales and float tensors as safetensors bytes.

    state (Dict[str, torch.Tensor]): The tensors.
    RETURNS (bytes): A safetensors blob the safe loader accepts.
    """
    metadata = {"format": INT8_FORMAT_TAG, "scheme": "int8-per-row-symmetric"}
    data = safetensors_save(state, metadata=metadata)
    # A safetensors blob starts with its header length; the loader refuses
    # blobs whose first byte looks like a pickle (0x80) or zip ("PK"), which
    # about one header length in 256 produces. Padding the metadata moves
    # the length off those values.
    pad = 1
    while _looks_like_pickle(data):
        data = safetensors_save(state, metadata={**metadata, "pad": " " * pad})
        pad += 1
    return data


def deserialize_quantized_stack(module: RNNStack, data: bytes, device=None) -> RNNStack:
    """Load int8 weights, or float ``RNNEncoder.v1`` weights that are then
    quantised, into a stack built from the config.

    module (RNNStack): The quantised stack built from the config.
    data (bytes): Bytes from ``serialize_quantized_stack`` or from the float
        encoder's serialiser.
    device: Ignored: int8 kernels run on CPU.
    RETURNS (RNNStack): The quantised stack with the stored weights.
    """
    state = load_state_bytes(data, what="QuantizedRNNEncoder")
    settings = getattr(module, "spacy_rnn_settings", None)
    if settings is None:
        raise ValueError("spacy-rnn: quantised stack built without its settings")
    if not any(key.endswith(INT8_SUFFIX) for key in state):
        # Float weights from spacy-rnn.RNNEncoder.v1: quantise them now.
        float_stack = RNNStack(**settings)
        load_state_strict(
            float_stack, state, "the stored float encoder weights do not fit the quantised encoder's config"
        )
        return quantize_stack(float_stack, settings)
    return load_int8_stack_state(module, state)


def load_int8_stack_state(module: RNNStack, state: Dict[str, torch.Tensor]) -> RNNStack:
    """Load tensors from ``quantized_state`` into a quantised stack.

    module (RNNStack): A quantised stack of the same shape.
    state (Dict[str, torch.Tensor]): The stored tensors.
    RETURNS (RNNStack): The stack, in eval mode.
    """
    expected = set(quantized_state(module))
    if set(state) != expected:
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        raise ValueError(
            f"spacy-rnn: the stored int8 weights do not fit the quantised "
            f"encoder built from the config (missing {missing}, unexpected {extra})"
        )
    for prefix, i, cell in _cells(module):
        if not _is_quantized_cell(cell):
            continue
        key = f"{prefix}.{i}."
        weights, biases = {}, {}
        for name in list(state):
            if not name.startswith(key):
                continue
            local = name[len(key):]
            if local.endswith(INT8_SUFFIX):
                base = local[: -len(INT8_SUFFIX)]
                weights[base] = (state[name], state[key + base + SCALE_SUFFIX])
            elif not local.endswith(SCALE_SUFFIX):
                biases[local] = state[name]
        _set_cell(cell, weights, biases)
    floats = dict(module.named_parameters())
    floats.update(dict(module.named_buffers()))
    with torch.no_grad():
        for name, tensor in floats.items():
            if tensor.shape != state[name].shape:
                raise ValueError(f"spacy-rnn: stored {name} has shape {tuple(state[name].shape)}")
            tensor.copy_(state[name])
    return module.eval()

"""Int8 inference for ``rnn_lm``: dynamic quantisation of a trained
``RNNLanguageModel`` (recurrent cells and the output / projection layers),
stored as safetensors.

What is quantised: the LSTM / GRU cells of both stacks (int8 weights, float
activations, PyTorch's dynamic kernels) and every ``nn.Linear`` outside
them: the output layer (or the adaptive softmax's head and tail layers) and
the projection, which dominate an LM's inference time at a 10k vocabulary.
The embedding stays float32 (a lookup, no matmul). With tied weights the
embedding keeps its float copy and the output layer gets an int8 one.

Storage follows ``spacy_rnn/layers/quantized_encoder.py``: each int8 matrix
is a plain ``int8`` tensor plus one float32 scale per row, never PyTorch's
pickled packed parameters, and the kernels are rebuilt from them exactly on
load. Float weights from a float ``rnn_lm`` are accepted too and quantised
on the spot, which is how ``python -m spacy_rnn quantize`` converts a
pipeline.
"""
import warnings
from typing import Any, Callable, Dict

import torch
from torch import nn

from ..layers.quantized_encoder import (
    INT8_SUFFIX,
    SCALE_SUFFIX,
    _to_qtensor,
    load_int8_stack_state,
    quantize_rows,
    quantize_stack,
    quantized_state,
    save_int8_state,
    store_int8_weight,
)
from ..serialization import load_state_bytes, load_state_strict
from ..torch_modules.language_model import RNNLanguageModel

STACKS = ("fwd", "bwd")
_STACK_PREFIXES = tuple(f"{name}." for name in STACKS)


def quantize_lm(module: RNNLanguageModel, settings: Dict[str, Any]) -> RNNLanguageModel:
    """Quantise a float language model in place, for CPU inference.

    module (RNNLanguageModel): A float model.
    settings (Dict[str, Any]): Its constructor arguments, kept for reloading.
    RETURNS (RNNLanguageModel): The same module, quantised and in eval mode.
    """
    module = module.cpu().eval()
    module.spacy_rnn_settings = dict(settings)
    for name in STACKS:
        stack = getattr(module, name)
        if stack is not None:
            quantize_stack(stack)
    for name, layer in _linears(module, nn.Linear):
        _replace(module, name, _quantized_linear(layer.weight, layer.bias))
    return module


def int8_state(module: RNNLanguageModel) -> Dict[str, torch.Tensor]:
    """Plain tensors that describe a quantised language model completely.

    module (RNNLanguageModel): A module returned by ``quantize_lm``.
    RETURNS (Dict[str, torch.Tensor]): int8 matrices with their row scales,
        and every float tensor (embedding, biases, buffers).
    """
    state: Dict[str, torch.Tensor] = {}
    for name in STACKS:
        stack = getattr(module, name)
        if stack is not None:
            for key, tensor in quantized_state(stack).items():
                state[f"{name}.{key}"] = tensor
    for name, layer in _linears(module, None):
        weight, bias = _linear_weight_bias(layer)
        store_int8_weight(state, name, weight)
        if bias is not None:
            state[name + ".bias"] = bias.detach().float().contiguous().clone()
    for key, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not key.startswith(_STACK_PREFIXES):
            state[key] = tensor.detach().cpu().contiguous().clone()
    return state


def serialize_int8_lm(module: RNNLanguageModel) -> bytes:
    """Serialise a quantised language model as safetensors bytes.

    module (RNNLanguageModel): The quantised model.
    RETURNS (bytes): A safetensors blob.
    """
    return save_int8_state(int8_state(module))


def deserialize_int8_lm(module: RNNLanguageModel, data: bytes, device=None) -> RNNLanguageModel:
    """Load int8 weights, or a float ``rnn_lm``'s weights that are then
    quantised, into a quantised model built from the config.

    module (RNNLanguageModel): The quantised model built from the config.
    data (bytes): Bytes from ``serialize_int8_lm`` or the float serialiser.
    device: Ignored: int8 kernels run on CPU.
    RETURNS (RNNLanguageModel): The quantised model with the stored weights.
    """
    state = load_state_bytes(data, what="int8 rnn_lm")
    settings = getattr(module, "spacy_rnn_settings", None)
    if settings is None:
        raise ValueError("spacy-rnn: int8 language model built without its settings")
    if not any(key.endswith(INT8_SUFFIX) for key in state):
        float_module = RNNLanguageModel(**settings)
        load_state_strict(
            float_module,
            state,
            "the stored float language model weights do not fit the int8 model built from the config",
        )
        return quantize_lm(float_module, settings)
    expected = set(int8_state(module))
    if set(state) != expected:
        raise ValueError(
            f"spacy-rnn: the stored int8 language model weights do not fit the "
            f"model built from the config (missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)})"
        )
    for name in STACKS:
        stack = getattr(module, name)
        if stack is not None:
            prefix = name + "."
            load_int8_stack_state(
                stack, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            )
    for name, _ in _linears(module, None):
        _replace(
            module,
            name,
            _linear_from_int8(
                state[name + INT8_SUFFIX], state[name + SCALE_SUFFIX], state.get(name + ".bias")
            ),
        )
    floats = dict(module.named_parameters())
    floats.update(dict(module.named_buffers()))
    with torch.no_grad():
        for key, tensor in floats.items():
            if key.startswith(_STACK_PREFIXES):
                continue
            if tensor.shape != state[key].shape:
                raise ValueError(f"spacy-rnn: stored {key} has shape {tuple(state[key].shape)}")
            tensor.copy_(state[key])
    return module.eval()


def int8_serializers() -> Dict[str, Callable]:
    """The shim arguments that store a model as int8 safetensors."""
    return {"serialize_model": serialize_int8_lm, "deserialize_model": deserialize_int8_lm}


# -- helpers ------------------------------------------------------------------


def _quantized_linear(weight: torch.Tensor, bias) -> nn.Module:
    values, scale = quantize_rows(weight)
    return _linear_from_int8(values, scale, None if bias is None else bias.detach())


def _linear_from_int8(values: torch.Tensor, scale: torch.Tensor, bias) -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    out_features, in_features = values.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = nnqd.Linear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
        layer.set_weight_bias(
            _to_qtensor(values, scale), None if bias is None else bias.float().cpu()
        )
    return layer


def _linears(module: nn.Module, kind):
    # (qualified name, layer) of the Linear layers outside the recurrent
    # stacks: float ones (kind=nn.Linear) or dynamic int8 ones (kind=None).
    import torch.ao.nn.quantized.dynamic as nnqd

    cls = nnqd.Linear if kind is None else kind
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if type(layer) is cls and not name.startswith(_STACK_PREFIXES)
    ]


def _replace(module: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, layer)


def _linear_weight_bias(layer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return layer.weight(), layer.bias()

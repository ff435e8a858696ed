"""Safe (de)serialisation of the torch modules inside spacy-rnn models.

Thinc's default PyTorch shim stores weights with ``torch.save`` (a pickle)
and reads them with ``torch.load``. spacy-rnn stores a safetensors blob
instead and refuses anything else, so loading a pipeline can never execute
code that was planted in its weights.
"""
from typing import Any, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

FORMAT_TAG = "spacy-rnn-safetensors"


class UnsafeWeightsError(ValueError):
    """Raised when stored weights are not in the safe format."""


def serialize_torch_module(module: torch.nn.Module) -> bytes:
    """Serialise a module's state dict as safetensors bytes.

    module (torch.nn.Module): The module to serialise.
    RETURNS (bytes): A safetensors blob.
    """
    # Cloning breaks storage sharing (tied embeddings), which safetensors
    # refuses; loading writes the same values into both tied names.
    state = {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in module.state_dict().items()
    }
    return safetensors_save(state, metadata={"format": FORMAT_TAG})


def deserialize_torch_module(
    module: torch.nn.Module, data: bytes, device: "torch.device"
) -> torch.nn.Module:
    """Load safetensors bytes into an already-built module.

    module (torch.nn.Module): The module, built from its config.
    data (bytes): Bytes written by ``serialize_torch_module``.
    device (torch.device): Where the module should live afterwards.
    RETURNS (torch.nn.Module): The same module with the loaded weights.
    """
    state = load_state_bytes(data, what=type(module).__name__)
    load_state_strict(
        module,
        state,
        f"the stored weights do not fit the {type(module).__name__} built from the "
        f"pipeline's config (was the config edited after training?)",
    )
    module.to(device)
    return module


def load_state_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], problem: str) -> None:
    """Load a state dict that must match the module exactly.

    module (torch.nn.Module): The module.
    state (Dict[str, torch.Tensor]): The tensors.
    problem (str): What a mismatch means, for the error message.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"spacy-rnn: {problem}: {err}") from None


def load_state_bytes(data: bytes, what: str = "model") -> Dict[str, torch.Tensor]:
    """Parse safetensors bytes into tensors, refusing pickles and junk.

    data (bytes): The stored weights.
    what (str): Name used in error messages.
    RETURNS (Dict[str, torch.Tensor]): The tensors, on CPU.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeWeightsError(
            f"spacy-rnn: weights for {what} are {type(data).__name__}, not bytes"
        )
    if not _looks_like_safetensors(data) and _looks_like_pickle(data):
        raise UnsafeWeightsError(
            f"spacy-rnn: refusing to load weights for {what}: they are a Python "
            f"pickle (torch.save format), which can run arbitrary code. spacy-rnn "
            f"only loads safetensors weights; re-save the pipeline with spacy-rnn."
        )
    try:
        return safetensors_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise UnsafeWeightsError(
            f"spacy-rnn: the weights for {what} are not a valid safetensors blob "
            f"(corrupt or foreign file): {err}"
        ) from None


def _looks_like_safetensors(data: Any) -> bool:
    # A safetensors blob is an 8-byte little-endian header length followed
    # by a JSON header. Check that framing first: the length's low byte can
    # be anything, 0x80 included, so sniffing for a pickle alone misfires.
    if len(data) < 10:
        return False
    header_len = int.from_bytes(bytes(data[:8]), "little")
    return 8 + header_len <= len(data) and bytes(data[8:9]) == b"{"


def _looks_like_pickle(data: Any) -> bool:
    head = bytes(data[:4])
    # Pickle protocol 2+ starts with 0x80; torch.save's zip container with "PK".
    return head[:1] == b"\x80" or head[:2] == b"PK"

"""Callbacks: initialise a text classifier's recurrent encoder from a
trained ``rnn_lm`` (ULMFiT-style transfer), through config alone.

Only the recurrent weights move: the LM reads word ids through its own
embedding table while the classifier's tok2vec embeds hashed features, so
there is no embedding to share. The LM's forward stack fills the encoder's
``fwd`` modules layer by layer and, for a bidirectional encoder, the LM's
backward stack fills its ``bwd`` modules.
"""
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch
from spacy.language import Language
from spacy.util import registry
from thinc.api import Model

from .torch_modules.rnn_stack import RNNStack


@registry.callbacks("spacy_rnn.load_lm_encoder.v1")
def create_load_lm_encoder(
    path: str,
    component: str,
    lm_component: Optional[str] = None,
    n_layers: int = 0,
) -> Callable[[Language], Language]:
    """Copy a trained LM's recurrent weights into a component's
    ``spacy-rnn.RNNEncoder.v1``; use as ``[initialize.after_init]``.

    path (str): Directory of a pipeline containing an ``rnn_lm`` component.
    component (str): Name of the component whose encoder receives the weights.
    lm_component (Optional[str]): Name of the LM component in the loaded
        pipeline; None picks the only ``rnn_lm``.
    n_layers (int): Copy only the first ``n_layers`` layers (0: every layer of
        the encoder; the LM must then have at least as many).
    RETURNS (Callable[[Language], Language]): The callback.
    """

    def load_lm_encoder(nlp: Language) -> Language:
        import spacy

        lm_nlp = spacy.load(path)
        lm = _find_lm(lm_nlp, lm_component, path)
        if lm.cfg.get("int8"):
            raise ValueError(
                f"load_lm_encoder: the rnn_lm in {path} has int8 weights (made by "
                f"`quantize`, for inference only); point it at the float pipeline"
            )
        copy_lm_to_encoder(lm.module, find_rnn_encoders(nlp, component), n_layers)
        return nlp

    return load_lm_encoder


def find_rnn_encoders(nlp: Language, component: str) -> List[RNNStack]:
    """The ``RNNStack`` modules of every ``spacy-rnn.RNNEncoder.v1`` inside a
    component's model.

    nlp (Language): The pipeline.
    component (str): The component name.
    RETURNS (List[RNNStack]): The stacks (usually one).
    """
    if component not in nlp.component_names:
        raise ValueError(
            f"load_lm_encoder: no component {component!r} in the pipeline "
            f"(it has {nlp.component_names})"
        )
    model: Optional[Model] = getattr(nlp.get_pipe(component), "model", None)
    stacks = []
    if model is not None:
        for node in model.walk():
            if node.name == "rnn_encoder" and node.shims:
                stacks.append(node.shims[0]._model)
    if not stacks:
        raise ValueError(
            f"load_lm_encoder: component {component!r} has no "
            f"spacy-rnn.RNNEncoder.v1 to receive the language model's weights"
        )
    return stacks


def copy_lm_to_encoder(lm_module, encoders: List[RNNStack], n_layers: int = 0) -> None:
    """Copy LM stacks into encoder stacks, refusing anything that does not fit.

    lm_module (RNNLanguageModel): The trained LM's torch module.
    encoders (List[RNNStack]): Target stacks.
    n_layers (int): Layers to copy (0: all of the encoder's).
    """
    for enc in encoders:
        depth = n_layers or enc.depth
        if depth > enc.depth:
            raise ValueError(f"load_lm_encoder: n_layers={depth} but the encoder has {enc.depth}")
        pairs = [("forward", lm_module.fwd, enc.fwd)]
        if enc.bidirectional:
            if lm_module.bwd is None:
                raise ValueError(
                    "load_lm_encoder: the encoder is bidirectional but the "
                    "language model has no backward stack; train it with "
                    "bidirectional = true, or make the encoder one-directional"
                )
            pairs.append(("backward", lm_module.bwd, enc.bwd))
        for label, src_stack, dst_modules in pairs:
            if src_stack.cell != enc.cell:
                raise ValueError(
                    f"load_lm_encoder: the language model uses {src_stack.cell} "
                    f"cells, the encoder {enc.cell}"
                )
            if depth > src_stack.depth:
                raise ValueError(
                    f"load_lm_encoder: the encoder needs {depth} layers but the "
                    f"language model's {label} stack has {src_stack.depth}"
                )
            for i in range(depth):
                _copy_layer(src_stack.fwd[i], dst_modules[i], f"{label} layer {i}")


def _copy_layer(src: torch.nn.Module, dst: torch.nn.Module, where: str) -> None:
    src_state = src.state_dict()
    dst_state = dst.state_dict()
    for name, tensor in dst_state.items():
        if name not in src_state or src_state[name].shape != tensor.shape:
            got = tuple(src_state[name].shape) if name in src_state else "missing"
            raise ValueError(
                f"load_lm_encoder: shape mismatch in {where}, {name}: the encoder "
                f"needs {tuple(tensor.shape)}, the language model has {got}. "
                f"The encoder's per-direction width (width, or width / 2 when "
                f"bidirectional) must equal the LM's hidden_width, and its input "
                f"width the LM's embed_width (first layer) or hidden width."
            )
    with torch.no_grad():
        for name, tensor in dst_state.items():
            tensor.copy_(src_state[name].to(tensor.device, tensor.dtype))


def _find_lm(nlp: Language, name: Optional[str], path: Union[str, Path]):
    from .pipeline.language_model import RNNLanguageModelPipe

    if name is not None:
        pipe = nlp.get_pipe(name)
        if not isinstance(pipe, RNNLanguageModelPipe):
            raise ValueError(f"load_lm_encoder: {name!r} in {path} is not an rnn_lm component")
        return pipe
    found = [p for _, p in nlp.pipeline if isinstance(p, RNNLanguageModelPipe)]
    if len(found) != 1:
        raise ValueError(
            f"load_lm_encoder: expected exactly one rnn_lm component in {path}, "
            f"found {len(found)}; set lm_component"
        )
    return found[0]

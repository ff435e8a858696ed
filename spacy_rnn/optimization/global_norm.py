"""Gradient clipping by the global norm over all of a component's parameters.

Thinc's optimiser clips each parameter array on its own (``grad_clip``),
which changes the direction of the update; RNNs are usually trained with the
whole gradient rescaled at once (Pascanu et al. 2013, the pytorch/examples LM,
AWD-LSTM). spaCy's training loop gives no hook between the backward pass and
the optimiser step, so the callback below wraps each named component's
``finish_update`` at initialisation: the gradient is rescaled just before
the optimiser sees it. Set Thinc's own ``grad_clip`` to 0 next to it.
"""
import math
from typing import Callable, Iterable, List, Optional

from spacy.language import Language
from spacy.util import registry
from thinc.api import Model, PyTorchShim


def clip_global_norm(model: Model, max_norm: float) -> float:
    """Rescale all gradients of a model so their joint L2 norm is at most
    ``max_norm``: Thinc parameters and the parameters of PyTorch shims alike.

    model (Model): The model whose gradients to clip.
    max_norm (float): The largest allowed global norm.
    RETURNS (float): The global norm before clipping.
    """
    thinc_grads = []
    torch_grads = []
    for node in model.walk():
        for name in node.param_names:
            if node.has_grad(name):
                thinc_grads.append(node.get_grad(name))
        for shim in node.shims:
            if isinstance(shim, PyTorchShim):
                if hasattr(shim, "unscale_gradients"):
                    # Clip what the optimiser will see, not loss-scaled values.
                    shim.unscale_gradients()
                torch_grads.extend(
                    p.grad for p in shim._model.parameters() if p.grad is not None
                )
    total = 0.0
    for grad in thinc_grads:
        total += float((grad * grad).sum())
    for grad in torch_grads:
        total += float(grad.detach().float().pow(2).sum())
    norm = math.sqrt(total)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for grad in thinc_grads:
            grad *= scale
        for grad in torch_grads:
            grad.mul_(scale)
    return norm


@registry.callbacks("spacy_rnn.clip_global_norm.v1")
def make_clip_global_norm_callback(
    max_norm: float,
    components: Iterable[str] = tuple(),
    then: Optional[Callable[[Language], Language]] = None,
) -> Callable[[Language], Language]:
    """Callback for ``[initialize.after_init]`` that clips each listed
    component's gradient by its global norm before every optimiser step.

    max_norm (float): The largest allowed global gradient norm.
    components (Iterable[str]): Component names; empty means every
        trainable component.
    then (Optional[Callable[[Language], Language]]): Another after_init
        callback to run afterwards, since spaCy takes only one.
    RETURNS (Callable[[Language], Language]): The callback.
    """
    names: List[str] = list(components)

    def after_init(nlp: Language) -> Language:
        targets = names or [
            name for name, proc in nlp.pipeline if getattr(proc, "is_trainable", False)
        ]
        for name in targets:
            if name not in nlp.pipe_names:
                raise ValueError(
                    f"spacy_rnn.clip_global_norm.v1: no component named {name!r}; "
                    f"the pipeline has {nlp.pipe_names}"
                )
            _wrap_finish_update(nlp.get_pipe(name), max_norm)
        return then(nlp) if then is not None else nlp

    return after_init


def _wrap_finish_update(proc, max_norm: float) -> None:
    if getattr(proc, "_spacy_rnn_clipped", False):
        return
    original = proc.finish_update

    def finish_update(sgd):
        proc.cfg["last_grad_norm"] = clip_global_norm(proc.model, max_norm)
        return original(sgd)

    proc.finish_update = finish_update
    proc._spacy_rnn_clipped = True

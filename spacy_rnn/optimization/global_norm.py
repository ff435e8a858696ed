"""Gradient clipping by the global norm over all of a component's parameters.

Thinc's optimiser clips each parameter array on its own (``grad_clip``),
which changes the direction of the update; RNNs are usually trained with the
whole gradient rescaled at once (Pascanu et al. 2013, the pytorch/examples LM,
AWD-LSTM). spaCy's training loop gives no hook between the backward pass and
the optimiser step, so the callback below wraps each named component's
``finish_update`` at initialisation: the gradient is rescaled just before
the optimiser sees it. Set Thinc's own ``grad_clip`` to 0 next to it.
"""
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from spacy.language import Language
from spacy.util import registry
from thinc.api import Model, PyTorchShim
from thinc.util import xp2torch

from ..torch_modules.transfer import HostScalar


def clip_global_norm(model: Model, max_norm: float) -> float:
    """Rescale all gradients of a model so their joint L2 norm is at most
    ``max_norm``: Thinc parameters and the parameters of PyTorch shims alike.

    model (Model): The model whose gradients to clip.
    max_norm (float): The largest allowed global norm.
    RETURNS (float): The global norm before clipping.
    """
    norm = clip_global_norm_async(model, max_norm)
    return float(norm) if norm is not None else 0.0


def clip_global_norm_async(
    model: Model, max_norm: float, views: Optional[Dict[int, Tuple[object, torch.Tensor]]] = None
) -> Optional[HostScalar]:
    """``clip_global_norm`` without waiting for the device: the rescaling is
    queued as a few multi-tensor operations with the factor kept on the
    device, and the norm comes back as a ``HostScalar`` that is read (and
    waited for) only when converted with ``float()``.

    model (Model): The model whose gradients to clip.
    max_norm (float): The largest allowed global norm.
    views (Optional[Dict]): Torch views of Thinc's gradient arrays, kept by
        the caller from step to step (Thinc keeps the same arrays).
    RETURNS (Optional[HostScalar]): The global norm before clipping; None if
        the model has no gradients.
    """
    # Grouped by device and dtype, as torch.nn.utils.clip_grad_norm_ does:
    # each group's norms are one multi-tensor kernel on a GPU. The previous
    # version read every array's squared sum into Python, a device-to-host
    # wait per array and step.
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = defaultdict(list)
    for grad in _gradients(model, {} if views is None else views):
        groups[(grad.device, grad.dtype)].append(grad)
    if not groups:
        return None
    first = next(iter(groups))[0]
    norms = [
        torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()).to(first)
        for grads in groups.values()
    ]
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        # Clamped at 1 rather than tested on the host, so nothing waits: the
        # factor is exactly 1 (a no-op) while the norm is below max_norm.
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for (device, dtype), grads in groups.items():
            torch._foreach_mul_(grads, factor.to(device=device, dtype=dtype))
    return HostScalar(total)


def _gradients(model: Model, views: Dict[int, Tuple[object, torch.Tensor]]) -> List[torch.Tensor]:
    # Torch views of every gradient: Thinc's arrays through DLPack or numpy
    # (shared memory, so scaling the view scales the array) and the torch
    # parameters' own, unscaled first under mixed precision.
    grads: List[torch.Tensor] = []
    live = set()
    for node in model.walk():
        for name in node.param_names:
            if node.has_grad(name):
                grad = node.get_grad(name)
                if not grad.size:
                    continue
                # A DLPack conversion costs host time on a GPU; the views are
                # reused while Thinc keeps the same arrays.
                cached = views.get(id(grad))
                if cached is None or cached[0] is not grad:
                    cached = views[id(grad)] = (grad, xp2torch(grad))
                live.add(id(grad))
                grads.append(cached[1])
        for shim in node.shims:
            if isinstance(shim, PyTorchShim):
                if hasattr(shim, "unscale_gradients"):
                    # Clip what the optimiser will see, not loss-scaled values.
                    shim.unscale_gradients()
                grads.extend(
                    p.grad.detach()
                    for p in shim._model.parameters()
                    if p.grad is not None and p.grad.numel()
                )
    for key in [k for k in views if k not in live]:
        del views[key]  # arrays Thinc replaced (a resized output layer)
    return grads


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
    pending: List[HostScalar] = []
    views: Dict[int, Tuple[object, torch.Tensor]] = {}

    def finish_update(sgd):
        # ``cfg["last_grad_norm"]`` is a plain float (the config is saved as
        # JSON). A reading still on its way from a GPU is recorded at the next
        # step instead of waited for here, which would drain the device.
        if pending:
            proc.cfg["last_grad_norm"] = float(pending.pop())
        norm = clip_global_norm_async(proc.model, max_norm, views)
        result = original(sgd)
        if norm is not None:
            if norm.ready():
                proc.cfg["last_grad_norm"] = float(norm)
            else:
                pending.append(norm)
        return result

    proc.finish_update = finish_update
    proc._spacy_rnn_clipped = True

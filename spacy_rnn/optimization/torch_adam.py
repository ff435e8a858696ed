"""Thinc's Adam step, computed with torch on the parameters' own tensors.

Thinc applies its optimiser one parameter at a time through numpy (or CuPy)
views of a PyTorch model's weights. On CPU that is a single-threaded Cython
loop: on the PTB benchmark model (4.7M parameters) it took 10-11 ms per step
where the same arithmetic as in-place torch ops takes about 4 ms, a gap that
alone cost the ``rnn_lm`` ~8% of its training throughput against a plain
PyTorch loop (``benchmarks/lm_throughput.py``).

``thinc_adam_step`` reproduces ``thinc.optimizers.Optimizer.__call__`` for
Adam exactly: same per-key update counts, L2 (as gradient term or as
decoupled weight decay), per-tensor gradient clipping, bias-corrected
learning rate, the current value of every schedule, and parameter averages.
The moment estimates stay in the optimiser's own ``mom1``/``mom2`` dicts (as
arrays sharing memory with torch tensors), so both paths can be mixed and
nothing about the optimiser's state changes shape. Optimisers it does not
reproduce (RAdam, SGD, anything that is not Thinc's ``Optimizer``) are left
to the generic path: the function returns ``False`` for them.
"""
from typing import Dict, Hashable, Iterable, Tuple

import torch
from thinc.api import Optimizer
from thinc.util import torch2xp, xp2torch


def thinc_adam_step(
    optimizer: Optimizer,
    shim_id: Hashable,
    named_params: Iterable[Tuple[str, torch.nn.Parameter]],
    scratch: Dict[str, torch.Tensor],
) -> bool:
    """Apply one Thinc Adam update to torch parameters, in place.

    optimizer (Optimizer): The Thinc optimiser ``spacy train`` passes in.
    shim_id (Hashable): The shim's id; keys are ``(shim_id, name)`` as in
        Thinc's own ``PyTorchShim.finish_update``.
    named_params (Iterable[Tuple[str, Parameter]]): Parameters with gradients.
    scratch (Dict[str, torch.Tensor]): Reusable work buffers (kept by the
        caller so large steps don't allocate fresh memory every time).
    RETURNS (bool): False if the optimiser is not a plain Thinc Adam; nothing
        was changed then. Gradients are left for the caller to zero.
    """
    if type(optimizer) is not Optimizer or optimizer.use_radam:
        return False
    b1, b2 = float(optimizer.b1), float(optimizer.b2)
    if not (b1 > 0.0 and b2 > 0.0):
        return False
    eps = float(optimizer.eps)
    learn_rate = float(optimizer.learn_rate)
    L2 = float(optimizer.L2)
    clip = float(optimizer.grad_clip or 0.0)
    with torch.no_grad():
        for name, param in named_params:
            grad = param.grad
            # Write through ``.data``, which autograd's version check does not
            # see: spaCy's ``Language.update`` steps a ``tok2vec`` before its
            # listeners backpropagate through the graph of that same forward
            # pass, and an in-place write to the parameter itself would make
            # that backward pass fail. Thinc's own shim assigns ``.data``, so
            # the stale graph sees the new weights there too.
            param = param.data
            if grad is None or grad.numel() == 0:
                continue
            key = (shim_id, name)
            optimizer.nr_update[key] += 1
            nr_upd = optimizer.nr_update[key]
            if L2 != 0 and not optimizer.L2_is_weight_decay:
                grad.add_(param, alpha=L2)
            if clip:
                # Thinc: scale by clip / norm when norm >= clip. The clamp
                # gives the same factor without a device-to-host sync.
                norm = torch.linalg.vector_norm(grad)
                grad.mul_(torch.clamp(clip / norm, max=1.0))
            mom1, mom2 = _moments(optimizer, key, param)
            lr = learn_rate * (1.0 - b2**nr_upd) ** 0.5 / (1.0 - b1**nr_upd)
            mom1.mul_(b1).add_(grad, alpha=1.0 - b1)
            mom2.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            denom = _buffer(scratch, param)
            torch.sqrt(mom2, out=denom)
            denom.add_(eps)
            param.addcdiv_(mom1, denom, value=-lr)
            if L2 != 0 and optimizer.L2_is_weight_decay:
                param.mul_(1.0 - learn_rate * L2)
            if optimizer.averages is not None:
                _update_average(optimizer, key, param, nr_upd)
    return True


def _moments(optimizer: Optimizer, key, param: torch.Tensor):
    # Thinc keeps flat float32 arrays of the parameter's size; share memory
    # with them so the optimiser's state is the single source of truth.
    tensors = []
    for store in (optimizer.mom1, optimizer.mom2):
        if key not in store:
            t = torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
            store[key] = torch2xp(t)
        t = xp2torch(store[key], device=param.device)
        tensors.append(t.view(param.shape))
    return tensors


def _update_average(optimizer: Optimizer, key, param: torch.Tensor, nr_upd: int) -> None:
    # thinc.backends.Ops.update_averages with its default max_decay.
    if key not in optimizer.averages:
        optimizer.averages[key] = torch2xp(torch.zeros_like(param))
    avg = xp2torch(optimizer.averages[key], device=param.device)
    decay = min((1.0 + nr_upd) / (10.0 + nr_upd), 0.9999)
    avg.lerp_(param.detach(), 1.0 - decay)


def _buffer(scratch: Dict[str, torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    key = f"{param.device}:{param.dtype}"
    buf = scratch.get(key)
    n = param.numel()
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=param.dtype, device=param.device)
        scratch[key] = buf
    return buf[:n].view(param.shape)

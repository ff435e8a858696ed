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
    scratch: Dict,
) -> bool:
    """Apply one Thinc Adam update to torch parameters, in place.

    optimizer (Optimizer): The Thinc optimiser ``spacy train`` passes in.
    shim_id (Hashable): The shim's id; keys are ``(shim_id, name)`` as in
        Thinc's own ``PyTorchShim.finish_update``.
    named_params (Iterable[Tuple[str, Parameter]]): Parameters with gradients.
    scratch (Dict): Reusable work buffers and cached views of the optimiser's
        arrays, kept by the caller from step to step.
    RETURNS (bool): False if the optimiser is not a plain Thinc Adam; nothing
        was changed then. Gradients are left for the caller to clear.
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
    keys, params, grads = [], [], []
    for name, param in named_params:
        grad = param.grad
        if grad is None or grad.numel() == 0:
            continue
        keys.append((shim_id, name))
        # Write through ``.data``, which autograd's version check does not
        # see: spaCy's ``Language.update`` steps a ``tok2vec`` before its
        # listeners backpropagate through the graph of that same forward
        # pass, and an in-place write to the parameter itself would make
        # that backward pass fail. Thinc's own shim assigns ``.data``, so the
        # stale graph sees the new weights there too.
        params.append(param.data)
        grads.append(grad)
    if not params:
        return True
    steps = []
    for key in keys:
        optimizer.nr_update[key] += 1
        steps.append(optimizer.nr_update[key])
    rates = [learn_rate * (1.0 - b2**n) ** 0.5 / (1.0 - b1**n) for n in steps]
    with torch.no_grad():
        if L2 != 0 and not optimizer.L2_is_weight_decay:
            torch._foreach_add_(grads, params, alpha=L2)
        if clip:
            # Thinc: scale by clip / norm when norm >= clip. The clamp gives
            # the same factor without a device-to-host sync.
            factors = torch.clamp(clip / torch.stack(torch._foreach_norm(grads)), max=1.0)
            torch._foreach_mul_(grads, list(factors.unbind(0)))
        mom1 = [_view(scratch, ("mom1", k), optimizer.mom1, k, p) for k, p in zip(keys, params)]
        mom2 = [_view(scratch, ("mom2", k), optimizer.mom2, k, p) for k, p in zip(keys, params)]
        torch._foreach_mul_(mom1, b1)
        torch._foreach_add_(mom1, grads, alpha=1.0 - b1)
        torch._foreach_mul_(mom2, b2)
        torch._foreach_addcmul_(mom2, grads, grads, value=1.0 - b2)
        if params[0].is_cuda:
            # A handful of multi-tensor kernels rather than ~10 small ones
            # per parameter: on a GPU each launch costs more host time than
            # these tensors' arithmetic. The square roots get fresh memory
            # from the caching allocator.
            denom = torch._foreach_sqrt(mom2)
            torch._foreach_add_(denom, eps)
            if len(set(rates)) == 1:
                torch._foreach_addcdiv_(params, mom1, denom, value=-rates[0])
            else:
                torch._foreach_addcdiv_(params, mom1, denom, [-r for r in rates])
            del denom
        else:
            # On CPU one reused buffer: a fresh one per large tensor and step
            # would be page-faulted in every time.
            for param, m1, m2, lr in zip(params, mom1, mom2, rates):
                denom = _buffer(scratch, param)
                torch.sqrt(m2, out=denom)
                denom.add_(eps)
                param.addcdiv_(m1, denom, value=-lr)
        if L2 != 0 and optimizer.L2_is_weight_decay:
            torch._foreach_mul_(params, 1.0 - learn_rate * L2)
        if optimizer.averages is not None:
            # thinc.backends.Ops.update_averages with its default max_decay.
            avgs = [
                _view(scratch, ("avg", k), optimizer.averages, k, p)
                for k, p in zip(keys, params)
            ]
            for avg, param, n in zip(avgs, params, steps):
                avg.lerp_(param, 1.0 - min((1.0 + n) / (10.0 + n), 0.9999))
    return True


def _view(scratch: Dict, slot, store: Dict, key, param: torch.Tensor) -> torch.Tensor:
    # Thinc keeps float32 arrays of the parameter's size (flat moments,
    # averages in the parameter's shape). Torch views share their memory,
    # so the optimiser's state stays the single source of truth. The views
    # are cached while the optimiser holds the same arrays: a DLPack round
    # trip per tensor and step cost ~0.1 ms of host time on a GPU.
    if key not in store:
        shape = param.shape if slot[0] == "avg" else (param.numel(),)
        store[key] = torch2xp(torch.zeros(shape, dtype=param.dtype, device=param.device))
    array = store[key]
    cached = scratch.get(slot)
    if cached is not None and cached[0] is array:
        return cached[1]
    view = xp2torch(array, device=param.device).view(param.shape)
    scratch[slot] = (array, view)
    return view


def _buffer(scratch: Dict[str, torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    key = f"{param.device}:{param.dtype}"
    buf = scratch.get(key)
    n = param.numel()
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=param.dtype, device=param.device)
        scratch[key] = buf
    return buf[:n].view(param.shape)

"""Thinc's PyTorch shim with an optimiser step that updates weights in place.

Thinc's ``PyTorchShim.finish_update`` assigns a new tensor to every
parameter's ``.data`` on each step. Measured in this project, a process then
grows by about one copy of the weights per step (gigabytes over a language
model epoch, ~800 MB over 2,000 steps of the Amazon BiLSTM). Writing the
optimiser's result into the existing storage keeps memory flat.

Thinc's Adam (what ``spacy train`` uses) is applied with torch ops on the
parameters themselves (``spacy_rnn/optimization/torch_adam.py``): the same
update as Thinc's, multi-threaded on CPU and without host round trips on
GPU. Any other optimiser goes through Thinc one parameter at a time.

Components that drive the torch module themselves (``rnn_lm`` runs one
backward pass per BPTT window) call ``backward`` here, so that mixed
precision's loss scaling and the unscaling before the step stay in one place.

Mixed precision: Thinc autocasts to float16 on CUDA only, and its gradient
scaler refuses CPU tensors, so ``mixed_precision=True`` on CPU used to fail
at the first backward pass. Here it means bfloat16 autocast on CPU (which
has float32's range, so no loss scaling) and Thinc's behaviour on CUDA.
"""
import contextlib
import warnings
from typing import Dict, Optional

import torch
from thinc.api import Optimizer, PyTorchGradScaler, PyTorchShim
from thinc.util import get_torch_default_device, torch2xp, xp2torch

from ..optimization.torch_adam import thinc_adam_step


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX);
    torch's private probes, so an unknown answer counts as yes."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if p is not None]
    return not probes or any(bool(p()) for p in probes)


class InPlacePyTorchShim(PyTorchShim):
    """``PyTorchShim`` whose ``finish_update`` keeps each parameter's storage."""

    def __init__(
        self,
        model,
        *args,
        mixed_precision: bool = False,
        grad_scaler: Optional[PyTorchGradScaler] = None,
        device: Optional[torch.device] = None,
        **kwargs,
    ):
        if device is None:
            device = get_torch_default_device()
        on_cuda = device.type == "cuda"
        if grad_scaler is None:
            grad_scaler = PyTorchGradScaler(enabled=mixed_precision and on_cuda)
        super().__init__(
            model,
            *args,
            mixed_precision=mixed_precision and on_cuda,
            grad_scaler=grad_scaler,
            device=device,
            **kwargs,
        )
        self.wants_mixed_precision = bool(mixed_precision)
        if mixed_precision and device.type == "cpu" and not cpu_has_bfloat16():
            warnings.warn(
                "spacy-rnn: mixed_precision = true on a CPU without bfloat16 "
                "instructions (AVX512-BF16 or AMX): autocast will emulate "
                "bfloat16 and run slower than float32. Set mixed_precision = "
                "false here.",
                stacklevel=2,
            )
        # The Adam step's state between steps: work buffers, reused so that
        # large parameters don't allocate fresh memory on every step, and
        # cached torch views of the optimiser's moment and average arrays.
        self._scratch: Dict = {}
        self._unscale_pending = False

    def autocast(self):
        """The autocast context of this shim's forward passes: float16 on
        CUDA, bfloat16 on CPU, none without mixed precision."""
        if not self.wants_mixed_precision:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def predict(self, inputs):
        with self._cpu_autocast():
            return super().predict(inputs)

    def begin_update(self, inputs):
        # The backward pass runs later, outside the context, as torch.amp asks.
        with self._cpu_autocast():
            return super().begin_update(inputs)

    def _cpu_autocast(self):
        # On CUDA, Thinc's own predict / begin_update autocast already.
        if self.device.type == "cuda":
            return contextlib.nullcontext()
        return self.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a scalar loss computed with this shim's module,
        scaled by the gradient scaler when mixed precision is on.

        loss (torch.Tensor): The loss.
        """
        self._grad_scaler.scale(loss).backward()
        self._unscale_pending = True

    def unscale_gradients(self) -> bool:
        """Divide gradients accumulated through ``backward`` by the loss scale
        (once, however many ``backward`` calls came before); anything that
        reads gradients before the step (global-norm clipping) calls this.

        RETURNS (bool): Whether an overflow was found (the step is skipped).
        """
        if self._unscale_pending:
            self._unscale_pending = False
            grads = [p.grad for p in self._model.parameters() if p.grad is not None]
            if grads:
                self._grad_scaler.unscale(grads)
        return self._grad_scaler.found_inf

    def finish_update(self, optimizer: Optimizer) -> None:
        params = [
            (name, param)
            for name, param in self._model.named_parameters()
            if param.grad is not None
        ]
        # Mixed precision: skip the step if any gradient overflowed.
        if not self.unscale_gradients():
            if not thinc_adam_step(optimizer, self.id, params, self._scratch):
                self._generic_step(optimizer, params)
        # Dropped rather than zeroed, as ``zero_grad(set_to_none=True)``
        # does: the next backward pass then stores its fresh gradients as
        # they are, where zeroed ones cost a fill and an add per parameter
        # (two kernel launches each on a GPU) every step.
        for _, param in params:
            param.grad = None
        self._grad_scaler.update()

    @contextlib.contextmanager
    def use_params(self, params: Dict):
        """While open, each torch parameter with a value in ``params`` (such as
        ``optimizer.averages``) holds that value; restored afterwards.

        Thinc's ``PyTorchShim.use_params`` reads only ``"pytorch_{id}_{name}"``
        keys, while Thinc's optimisers (and ``thinc_adam_step``) keep averages
        under ``(id, name)``: with ``use_averages = true`` spaCy evaluated and
        saved averaged Thinc layers around raw recurrent weights. Both keys are
        read here, and values are copied in place, so tied weights follow and
        nothing is re-allocated.

        params (Dict): Parameter values keyed ``(shim id, name)`` or
            ``"pytorch_{shim id}_{name}"``.
        """
        backup = {}
        named = dict(self._model.named_parameters()) if params else {}
        with torch.no_grad():
            for name, param in named.items():
                value = params.get((self.id, name))
                if value is None:
                    value = params.get(f"pytorch_{self.id}_{name}")
                if value is None:
                    continue
                backup[name] = param.detach().clone()
                param.data.copy_(xp2torch(value, device=param.device).reshape(param.shape).to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    named[name].data.copy_(value)

    def _generic_step(self, optimizer: Optimizer, params) -> None:
        for name, param in params:
            new, _ = optimizer((self.id, name), torch2xp(param.data), torch2xp(param.grad))
            new_t = xp2torch(new, device=param.device)
            if new_t.data_ptr() != param.data_ptr():
                # Through ``.data``, like ``thinc_adam_step``: a listener may
                # still backpropagate through this step's forward pass.
                param.data.copy_(new_t)

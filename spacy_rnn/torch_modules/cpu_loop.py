"""What the fused CPU loops (``fused_gru.py``, ``fused_elman.py``) share:
when they may stand in for a PyTorch module, and how several same-shaped
recurrent layers (the two directions of a layer) are stacked into one call
and split again. Plain PyTorch."""
from typing import Callable, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn


def cpu_loop_applies(rnn: nn.Module, X, module_type: Type[nn.Module]) -> bool:
    """Whether a fused CPU loop can stand in for ``rnn(X)``.

    rnn (nn.Module): The recurrent module about to run.
    X: Its input: a tensor, or a ``PackedSequence`` (never fused).
    module_type (Type[nn.Module]): The exact module class the loop
        implements (``nn.GRU`` or ``nn.RNN``); subclasses, such as int8
        modules, keep their own kernels.
    RETURNS (bool): True for a one-layer, one-directional, batch-first module
        of that class with biases, on a float32 or float64 CPU tensor,
        outside CPU autocast.
    """
    return (
        type(rnn) is module_type
        and isinstance(X, torch.Tensor)
        and X.device.type == "cpu"
        and X.dtype in (torch.float32, torch.float64)
        and X.dim() == 3
        and rnn.num_layers == 1
        and not rnn.bidirectional
        and rnn.batch_first
        and rnn.bias
        and getattr(rnn, "proj_size", 0) == 0
        and not cpu_autocast_enabled()
    )


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on, on every PyTorch the package accepts
    (``is_autocast_enabled`` takes a device type only from PyTorch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def run_stacked(
    Xs: Sequence[torch.Tensor],
    h0s: Sequence[Optional[torch.Tensor]],
    weights: Sequence[Sequence[torch.Tensor]],
    loop: Callable[..., torch.Tensor],
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Stack K same-shaped layers' inputs, initial states and weights, run
    ``loop`` once on the stacks, and split its output per layer.

    Xs (Sequence[torch.Tensor]): (batch, time, input) inputs, same shape.
    h0s (Sequence[Optional[torch.Tensor]]): (1, batch, hidden) initial
        states, or None for zeros.
    weights (Sequence[Sequence[torch.Tensor]]): Each layer's ``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes.
    loop (Callable[..., torch.Tensor]): Called as ``loop(X, h0, w_ih, w_hh,
        b_ih, b_hh)`` with (K, batch, time, input) inputs, (K, batch, hidden)
        states and (K, ...) weights; returns (K, batch, time, hidden).
    RETURNS (Tuple[List[torch.Tensor], List[torch.Tensor]]): Each layer's
        (batch, time, hidden) outputs, and its (1, batch, hidden) final state.
    """
    K = len(Xs)
    X = Xs[0]
    B, T = X.shape[0], X.shape[1]
    H = weights[0][1].shape[1]
    h0 = torch.stack(
        [X.new_zeros((B, H)) if h is None else h.reshape(B, H).to(X.dtype) for h in h0s]
    )
    if T == 0:
        return [X.new_empty((B, 0, H)) for _ in range(K)], list(h0.unsqueeze(1).unbind(0))
    stacked = [torch.stack([w[j] for w in weights]) for j in range(4)]
    X_all = X.unsqueeze(0) if K == 1 else torch.stack(list(Xs))
    Y = loop(X_all, h0, *stacked)
    return list(Y.unbind(0)), list(Y[:, :, -1].unsqueeze(1).unbind(0))

"""The RNN optimisation toolkit: training-time techniques as config settings."""
from .global_norm import clip_global_norm, clip_global_norm_async, make_clip_global_norm_callback
from .heap import keep_freed_memory, make_keep_freed_memory_callback
from .ntasgd import NTASGD, make_ntasgd, ntasgd_monitor
from .plateau import plateau_monitor, plateau_schedule
from .torch_gemm import TorchGemmOps, make_torch_gemm_callback, replace_numpy_ops, use_torch_gemm

__all__ = [
    "clip_global_norm",
    "clip_global_norm_async",
    "make_clip_global_norm_callback",
    "keep_freed_memory",
    "make_keep_freed_memory_callback",
    "NTASGD",
    "make_ntasgd",
    "ntasgd_monitor",
    "plateau_monitor",
    "plateau_schedule",
    "TorchGemmOps",
    "use_torch_gemm",
    "replace_numpy_ops",
    "make_torch_gemm_callback",
]

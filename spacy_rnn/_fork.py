"""Make forked worker processes safe for torch's CPU kernels.

``nlp.pipe(..., n_process=N)`` forks the process. When the parent has
already run torch's OpenMP-parallel CPU kernels (any RNN forward pass), a
forked child that enters a parallel region waits for pool threads that were
not copied by ``fork`` and hangs for ever (GNU OpenMP is not fork-safe).
A child that runs torch with one thread never touches that pool; with N
worker processes the cores are used by the processes instead.
"""
import os

_registered = False


def _single_threaded_child() -> None:
    import torch

    torch.set_num_threads(1)


def register_fork_handler() -> None:
    """Register the after-fork handler once per process."""
    global _registered
    if _registered or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(after_in_child=_single_threaded_child)
    _registered = True

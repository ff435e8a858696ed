"""Keep freed tensor memory in the process instead of returning it to the OS.

PyTorch has no caching allocator on CPU: every tensor is a ``malloc`` and
every free a ``free``. glibc serves a large block with ``mmap`` or from the
top of its heap, and gives it back to the kernel when freed (``munmap``, or
a heap trim). The next step's tensor of the same size is then mapped again
and the kernel faults its pages in one by one, zeroing each. A language
model's softmax buffers (700 tokens x 10k words x 4 bytes = 28 MB each, a
few per step) made 4,000-18,000 page faults per training step in
``benchmarks/lm_throughput.py``, and how many depended on the state of the
heap, so the same benchmark ran up to a quarter slower in some runs than in
others (2-core dev VM, 2026-11-23).

``keep_freed_memory`` raises glibc's two thresholds with ``mallopt``: blocks
up to ``mmap_threshold_mb`` come from the heap, and the heap is not trimmed
until ``trim_threshold_mb`` lies free at its top. Freed buffers are then
reused without faults. The price is that the process keeps its peak heap
size. glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger
blocks are still mapped per allocation. The same effect is had without code
by exporting ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` before
Python starts, or by preloading jemalloc or tcmalloc, as PyTorch's CPU
performance guide suggests.
"""
import ctypes
import ctypes.util
import sys
from typing import Callable, Dict, Optional

from spacy.language import Language
from spacy.util import registry

# mallopt parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
MAX_MMAP_THRESHOLD_MB = 32


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 2047) -> bool:
    """Make glibc's malloc keep freed blocks for reuse (see the module
    docstring). Does nothing where malloc is not glibc's.

    mmap_threshold_mb (int): Blocks up to this size come from the heap
        (at most 32).
    trim_threshold_mb (int): Free memory at the top of the heap kept before
        it is returned to the OS (at most 2047).
    RETURNS (bool): Whether both settings were applied.
    """
    _check_thresholds(mmap_threshold_mb, trim_threshold_mb)
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # In bytes, as ints: 2047 MiB is the largest trim threshold that fits.
    env = malloc_environment(mmap_threshold_mb, trim_threshold_mb)
    return (
        mallopt(M_MMAP_THRESHOLD, int(env["MALLOC_MMAP_THRESHOLD_"])) == 1
        and mallopt(M_TRIM_THRESHOLD, int(env["MALLOC_TRIM_THRESHOLD_"])) == 1
    )


def malloc_environment(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 2047) -> Dict[str, str]:
    """The environment variables that give a new process the settings of
    ``keep_freed_memory`` from its start (glibc reads them at start-up).

    mmap_threshold_mb (int): As in ``keep_freed_memory``.
    trim_threshold_mb (int): As in ``keep_freed_memory``.
    RETURNS (Dict[str, str]): Variable names and values.
    """
    _check_thresholds(mmap_threshold_mb, trim_threshold_mb)
    mib = 1024 * 1024
    return {
        "MALLOC_MMAP_THRESHOLD_": str(mmap_threshold_mb * mib),
        "MALLOC_TRIM_THRESHOLD_": str(min(trim_threshold_mb * mib, 2**31 - 1)),
    }


@registry.callbacks("spacy_rnn.keep_freed_memory.v1")
def make_keep_freed_memory_callback(
    mmap_threshold_mb: int = 32,
    trim_threshold_mb: int = 2047,
    then: Optional[Callable[[Language], Language]] = None,
) -> Callable[[Language], Language]:
    """Callback for ``[initialize.before_init]`` (or ``after_init``) that
    calls ``keep_freed_memory`` once, before training starts.

    mmap_threshold_mb (int): Blocks up to this size come from the heap (at
        most 32).
    trim_threshold_mb (int): Free heap kept before trimming (at most 2047).
    then (Optional[Callable[[Language], Language]]): Another callback to run
        afterwards, since spaCy takes only one per slot.
    RETURNS (Callable[[Language], Language]): The callback.
    """
    # Checked when the config is resolved, before any training.
    _check_thresholds(mmap_threshold_mb, trim_threshold_mb)

    def callback(nlp: Language) -> Language:
        keep_freed_memory(mmap_threshold_mb, trim_threshold_mb)
        return then(nlp) if then is not None else nlp

    return callback


def _check_thresholds(mmap_threshold_mb: int, trim_threshold_mb: int) -> None:
    if not 0 < mmap_threshold_mb <= MAX_MMAP_THRESHOLD_MB:
        raise ValueError(
            f"mmap_threshold_mb must be in (0, {MAX_MMAP_THRESHOLD_MB}] "
            f"(glibc's limit), got {mmap_threshold_mb}"
        )
    if not 0 < trim_threshold_mb < 2048:
        raise ValueError(f"trim_threshold_mb must be in (0, 2048), got {trim_threshold_mb}")


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl and other C libraries have no mallopt, or one that ignores these.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt

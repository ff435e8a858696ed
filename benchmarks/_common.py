"""Helpers shared by the benchmark scripts (not part of the package).

Thread counts must be fixed before torch is imported: with more OpenMP /
oneDNN threads than free cores, their spin-waiting makes timings meaningless
(100x slowdowns were seen on a shared 2-core machine). So every script parses
its arguments, calls ``setup_threads`` and only then imports torch.
"""
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_REVIEWS = DEFAULT_DATA / "amazon-mds" / "reviews.jsonl"
DEFAULT_PTB = DEFAULT_DATA / "ptb"


def add_common_args(parser, gpu: bool = True) -> None:
    """``--threads``, ``--seed``, ``--keep-freed-memory`` and, unless the
    script measures the CPU only (``gpu=False``), ``--gpu-id``."""
    parser.add_argument("--threads", type=int, default=0,
                        help="torch/OpenMP threads (0: all cores)")
    if gpu:
        parser.add_argument("--gpu-id", type=int, default=-1,
                            help="CUDA device to use (-1: CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed memory for reuse (spacy_rnn.keep_freed_memory.v1): "
                             "no page faults from large per-step buffers")


def add_gemm_arg(parser) -> None:
    parser.add_argument("--gemm", choices=["blis", "torch", "numpy"], default="blis",
                        help="what runs Thinc's CPU matrix products in every model: "
                             "Thinc's default BLIS, PyTorch (spacy_rnn.torch_gemm.v1) "
                             "or numpy's BLAS (NumpyOps(use_blis=False))")


def apply_gemm(nlp, args) -> int:
    """Switch the pipeline's plain ``NumpyOps`` layers to ``--gemm``'s
    backend; the number of layers switched (0 for "blis")."""
    gemm = getattr(args, "gemm", "blis")
    if gemm == "blis":
        return 0
    from thinc.api import NumpyOps

    from spacy_rnn.optimization.torch_gemm import replace_numpy_ops, use_torch_gemm

    if gemm == "torch":
        return use_torch_gemm(nlp)
    return replace_numpy_ops(nlp, NumpyOps(use_blis=False))


def add_rnn_kernel_arg(parser) -> None:
    parser.add_argument("--rnn-kernel", choices=["fused", "fused-buckets", "torch"], default="fused",
                        help="what runs spacy-rnn's GRU and Elman RNN layers on the CPU: its "
                             "fused loops (spacy_rnn/torch_modules/fused_gru.py, fused_elman.py) "
                             "over a whole batch at once (the default), the same loops once per "
                             "length bucket (as before session 14), or nn.GRU / nn.RNN. LSTMs "
                             "always run PyTorch's kernel")


def set_rnn_kernel(stack_or_class, kernel: str) -> None:
    """Set ``fused_cpu_kernels`` and ``ragged_cpu_loop`` on an ``RNNStack``
    (or on the class, for every stack) for an ``--rnn-kernel`` value."""
    stack_or_class.fused_cpu_kernels = kernel != "torch"
    stack_or_class.ragged_cpu_loop = kernel == "fused"


def apply_rnn_kernel(nlp, args) -> int:
    """Set the ``RNNStack`` class's kernels (for every stack) from
    ``--rnn-kernel``; the number of stacks in the pipeline's models."""
    from spacy_rnn.torch_modules.rnn_stack import RNNStack

    set_rnn_kernel(RNNStack, getattr(args, "rnn_kernel", "fused"))
    return len(rnn_stacks(nlp))


def rnn_stacks(nlp) -> List:
    """Every ``RNNStack`` inside the torch modules of the pipeline's models."""
    from spacy_rnn.torch_modules.rnn_stack import RNNStack

    stacks = []
    for _, pipe in nlp.pipeline:
        model = getattr(pipe, "model", None)
        if model is None:
            continue
        for node in model.walk():
            for shim in node.shims:
                module = getattr(shim, "_model", None)
                if hasattr(module, "modules"):
                    stacks.extend(m for m in module.modules() if isinstance(m, RNNStack))
    return stacks


# Whether setup_threads applied spacy_rnn.keep_freed_memory (for machine_info).
_HEAP = {"keep_freed_memory": False}


def setup_threads(threads: int, keep_freed_memory: bool = False) -> int:
    """Pin thread counts for OpenMP, MKL and torch; call before importing torch.
    With ``keep_freed_memory``, also make glibc keep freed blocks for reuse,
    in this process and (through its environment) in any child process."""
    n = threads if threads and threads > 0 else (os.cpu_count() or 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if keep_freed_memory:
        from spacy_rnn.optimization.heap import keep_freed_memory as keep
        from spacy_rnn.optimization.heap import malloc_environment

        _HEAP["keep_freed_memory"] = keep()
        # Child processes (textcat_bench's) get the same heap from the start.
        os.environ.update(malloc_environment())
    import torch

    torch.set_num_threads(n)
    return n


def torch_device(gpu_id: int):
    import torch

    if gpu_id is not None and gpu_id >= 0:
        if not torch.cuda.is_available():
            raise SystemExit(f"--gpu-id {gpu_id}: CUDA is not available")
        torch.cuda.set_device(gpu_id)
        return torch.device("cuda", gpu_id)
    return torch.device("cpu")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device) -> float:
    sync(device)
    return time.perf_counter()


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    # Linux carries ru_maxrss across exec, so a child started by a big parent
    # would report the parent's peak; VmHWM belongs to this image alone.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def machine_info(threads: int, device) -> Dict:
    import torch

    info = {
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "keep_freed_memory": _HEAP["keep_freed_memory"],
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def gpu_peak_mb(device) -> Optional[float]:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def read_review_texts(path: Path, limit: int = 0) -> List[Dict]:
    """Reviews as dicts with text (title + body, as convert-amazon joins them)
    and label."""
    rows = []
    with Path(path).open(encoding="utf8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            title = row.get("title") or ""
            body = row.get("text") or ""
            row["full_text"] = f"{title}\n\n{body}" if title else body
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows


def quiet_stdout() -> None:
    """Send everything printed from now on to stderr: libraries print
    progress and warnings (wasabi) to stdout, and stdout must hold nothing
    but the JSON object."""
    sys.stdout = sys.stderr


def emit(result: Dict, indent: int = 1) -> None:
    """Print the one JSON object a benchmark produces, to the real stdout."""
    sys.__stdout__.write(json.dumps(result, indent=indent) + "\n")
    sys.__stdout__.flush()

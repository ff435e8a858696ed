"""Thinc's CPU matrix products through BLIS (its default), through numpy's
BLAS (``NumpyOps(use_blis=False)``) and through PyTorch (``TorchGemmOps``,
what ``spacy_rnn.torch_gemm.v1`` sets), on the three products of one Maxout
training step.

    python benchmarks/cpu_gemm.py --threads 2

The default shape is MultiHashEmbed's Maxout in ``rnn_textcat``'s default
model: four 128-wide embeddings concatenated (512 in), 128 out with 3
pieces, over a batch of 32 reviews (6,800 rows, 212 tokens each on average).
Tells, for this machine, whether ``spacy_rnn.torch_gemm.v1`` pays: it prints
one JSON object with the milliseconds of each product on each backend
(median of ``--repeats``), the largest relative difference of each
backend's results from BLIS's, and ``blis_over_torch`` and
``blis_over_numpy`` (above 1: faster than BLIS). The products run alone
here; in a training step numpy's BLAS also competes with torch's threads
(see ``spacy_rnn/optimization/torch_gemm.py``), so the end-to-end figure is
``textcat_bench.py --gemm torch``.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=6800, help="rows (tokens) in the batch")
    p.add_argument("--n-in", type=int, default=512, help="input width")
    p.add_argument("--n-out", type=int, default=128, help="output width")
    p.add_argument("--pieces", type=int, default=3, help="Maxout pieces")
    p.add_argument("--repeats", type=int, default=20)
    _common.add_common_args(p, gpu=False)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    # Before numpy loads: OpenBLAS reads its thread count once.
    threads = _common.setup_threads(args.threads, args.keep_freed_memory)
    import numpy
    import torch
    from thinc.api import NumpyOps

    from spacy_rnn.optimization.torch_gemm import TorchGemmOps

    rng = numpy.random.default_rng(args.seed)
    width = args.n_out * args.pieces
    X = rng.standard_normal((args.rows, args.n_in), dtype="float32")
    W = rng.standard_normal((width, args.n_in), dtype="float32")
    dY = rng.standard_normal((args.rows, width), dtype="float32")
    # The three products of thinc.layers.maxout, called as it calls them.
    products = {
        "forward": lambda ops: ops.gemm(X, W, trans2=True),
        "backward_input": lambda ops: ops.gemm(dY, W),
        "backward_weights": lambda ops: ops.gemm(dY, X, trans1=True),
    }
    backends = {"blis": NumpyOps(use_blis=True), "numpy": NumpyOps(use_blis=False),
                "torch": TorchGemmOps()}
    ms = {name: {} for name in backends}
    max_diff = {}
    for product, run in products.items():
        outputs = {}
        for name, ops in backends.items():
            outputs[name] = run(ops)  # warm-up, and the result to compare
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(ops)
                times.append(time.perf_counter() - start)
            ms[name][product] = round(statistics.median(times) * 1000, 3)
        scale = float(numpy.abs(outputs["blis"]).max()) or 1.0
        max_diff[product] = {
            name: float(numpy.abs(outputs[name] - outputs["blis"]).max()) / scale
            for name in ("numpy", "torch")
        }
    step = {name: round(sum(v.values()), 3) for name, v in ms.items()}
    result = {
        "benchmark": "cpu_gemm",
        **_common.machine_info(threads, torch.device("cpu")),
        "numpy_blas": _numpy_blas_name(numpy),
        "shape": {"rows": args.rows, "n_in": args.n_in, "n_out": args.n_out,
                  "pieces": args.pieces},
        "repeats": args.repeats,
        "ms": ms,
        "ms_per_training_step": step,
        "max_relative_difference_from_blis": max_diff,
        "blis_over_torch": round(step["blis"] / step["torch"], 3),
        "blis_over_numpy": round(step["blis"] / step["numpy"], 3),
    }
    _common.emit(result)
    return result


def _numpy_blas_name(numpy) -> str:
    try:
        config = numpy.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy: no mode="dicts"
        return "unknown"


if __name__ == "__main__":
    main()

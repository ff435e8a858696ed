"""``spacy train`` and ``spacy evaluate`` of one config with spacy-rnn's fused
CPU loops for GRU and Elman layers on (the default) or off.

    python benchmarks/spacy_train_kernels.py configs/textcat_gru.cfg \\
        --train corpus/amazon/train.spacy --dev corpus/amazon/dev.spacy \\
        --test corpus/amazon/test.spacy --rnn-kernel torch --max-steps 600

Runs spaCy's own training loop in this process (``spacy.cli.train.train``)
after setting ``RNNStack.fused_cpu_kernels`` from ``--rnn-kernel``, then
evaluates ``model-best`` on ``--test``. Prints one JSON object: wall seconds
of training, the best dev score, the test scores and ``spacy evaluate``'s
words per second. Same seed, same data and the same steps give the same
training up to float rounding with either kernel.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--train", type=Path, required=True, help="train .spacy")
    p.add_argument("--dev", type=Path, required=True, help="dev .spacy")
    p.add_argument("--test", type=Path, required=True, help="test .spacy for spacy evaluate")
    p.add_argument("--max-steps", type=int, default=0, help="training.max_steps (0: the config's)")
    p.add_argument("--eval-frequency", type=int, default=0,
                   help="training.eval_frequency (0: the config's)")
    p.add_argument("--output", type=Path, default=None,
                   help="training output directory (default: a temporary one)")
    _common.add_rnn_kernel_arg(p)
    _common.add_common_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import srsly
    import torch
    from spacy.cli.evaluate import evaluate
    from spacy.cli.train import train

    from spacy_rnn.torch_modules.rnn_stack import RNNStack

    _common.set_rnn_kernel(RNNStack, args.rnn_kernel)
    overrides = {
        "paths.train": str(args.train),
        "paths.dev": str(args.dev),
        "system.seed": args.seed,
    }
    if args.max_steps:
        overrides["training.max_steps"] = args.max_steps
    if args.eval_frequency:
        overrides["training.eval_frequency"] = args.eval_frequency
    with tempfile.TemporaryDirectory() as tmp:
        output = args.output or Path(tmp)
        start = time.perf_counter()
        train(args.config, output, use_gpu=args.gpu_id, overrides=overrides)
        wall = time.perf_counter() - start
        meta = srsly.read_json(output / "model-best" / "meta.json")
        scores = evaluate(output / "model-best", args.test, use_gpu=args.gpu_id)
    device = torch.device("cuda", args.gpu_id) if args.gpu_id >= 0 else torch.device("cpu")
    result = {
        "benchmark": "spacy_train_kernels",
        **_common.machine_info(threads, device),
        "config": str(args.config),
        "rnn_kernel": args.rnn_kernel,
        "seed": args.seed,
        "max_steps": args.max_steps or None,
        "train_wall_s": wall,
        "best_dev_score": meta.get("performance", {}).get("cats_score"),
        "test_scores": {k: v for k, v in scores.items() if isinstance(v, (int, float))},
        "evaluate_words_per_s": scores.get("speed"),
        "peak_rss_mb": _common.peak_rss_mb(),
    }
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()

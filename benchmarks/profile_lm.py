"""Where an ``rnn_lm`` training step spends its time: cProfile around the
``nlp.update`` calls of ``benchmarks/lm_throughput.py``'s spaCy side.

    python benchmarks/profile_lm.py --data ../shared/data/ptb --seconds 30

Same model and batches as the throughput benchmark (PTB, 10k words, 200-wide
embedding, 2x200 LSTM, BPTT 35, 20 streams, Thinc Adam). Reader time is
outside the profile, as it is outside the benchmark's timing. The JSON gives
milliseconds per step for the whole update and for its parts: spaCy's
example copying in ``Language.update``, word-id lookup, the torch forward
and backward, and the optimiser step, plus the functions with the most own
time.
"""
import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import lm_throughput  # noqa: E402

# (label, file suffix, function name) of the calls whose cumulative time is
# reported; a missing one reports 0.
PARTS = [
    ("spacy_copy_examples", "spacy/language.py", "_copy_examples"),
    ("word_ids", "spacy_rnn/pipeline/language_model.py", "doc_ids"),
    ("forward_backward", "spacy_rnn/pipeline/language_model.py", "_score"),
    ("backward_only", "torch/_tensor.py", "backward"),
    ("optimizer_step", "spacy_rnn/layers/torch_shim.py", "finish_update"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_PTB)
    p.add_argument("--seconds", type=float, default=30.0, help="profiled training time")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-train-tokens", type=int, default=200000)
    p.add_argument("--vocab-size", type=int, default=lm_throughput.SIZES["vocab_size"])
    p.add_argument("--width", type=int, default=lm_throughput.SIZES["hidden_width"])
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--mixed-precision", action="store_true",
                   help="profile rnn_lm with mixed_precision = true")
    _common.add_common_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads)
    import torch

    torch.manual_seed(args.seed)
    device = _common.torch_device(args.gpu_id)
    side = lm_throughput.SpacyRNNSide(args, Path(args.data) / "ptb.train.txt", device)
    side.train_for(args.warmup)
    profiler = cProfile.Profile()
    update = side.nlp.update

    def profiled_update(*a, **k):
        profiler.enable()
        try:
            return update(*a, **k)
        finally:
            profiler.disable()

    side.nlp.update = profiled_update
    tokens, seconds = side.train_for(args.seconds)
    steps = tokens / (lm_throughput.SIZES["n_streams"] * lm_throughput.SIZES["bptt"])
    stats = pstats.Stats(profiler).stats
    parts = {}
    for label, suffix, func in PARTS:
        parts[label] = 0.0
        for (filename, _, name), (_, _, _, cumtime, _) in stats.items():
            if name == func and filename.replace("\\", "/").endswith(suffix):
                parts[label] += cumtime * 1000 / steps
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[: args.top]
    result = {
        "benchmark": "profile_lm",
        "mixed_precision": bool(args.mixed_precision),
        **_common.machine_info(threads, device),
        "steps": round(steps, 1),
        "ms_per_step": seconds * 1000 / steps,
        "parts_ms_per_step": {k: round(v, 2) for k, v in parts.items()},
        "top_own_time_ms_per_step": [
            {"function": f"{Path(fn).name}:{line}({name})", "ms": round(st[2] * 1000 / steps, 2)}
            for (fn, line, name), st in top
        ],
    }
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()

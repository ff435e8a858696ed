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

``--torch-profiler`` instead profiles both sides of the throughput benchmark
(``rnn_lm`` through ``nlp.update``, and the plain PyTorch loop) with
``torch.profiler`` for ``--steps`` steps each: milliseconds per step, torch
operators per step, and the operators with the most own host time (and own
GPU time on CUDA) on each side, so that extra or slower kernels show up next
to the plain loop's.

    python benchmarks/profile_lm.py --data ../shared/data/ptb --torch-profiler

``--host-overhead`` times, without a profiler, the same ``--steps`` batches
through ``nlp.update``, through the component's own ``update`` and
``finish_update`` (what ``nlp.update`` calls), and through spaCy's example
copy alone, next to the plain loop's step: the difference between the first
two is what spaCy's ``Language.update`` costs, the difference between the
second and the plain loop what spacy-rnn costs. With a small model
(``--width 16 --vocab-size 500``) the arithmetic nearly vanishes and these
are host costs, the ones that bound a GPU step.

    python benchmarks/profile_lm.py --data ../shared/data/ptb --host-overhead --width 16 --vocab-size 500
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
    ("global_norm_clip", "spacy_rnn/optimization/global_norm.py", "clip_global_norm_async"),
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
    p.add_argument("--rnn-lm-clip", choices=["global", "per-tensor"], default="global",
                   help="rnn_lm's clipping, as in lm_throughput.py")
    p.add_argument("--rnn-lm-cuda-graphs", choices=["on", "off"], default="on",
                   help="rnn_lm's cuda_graphs setting, as in lm_throughput.py")
    p.add_argument("--rnn-lm-fused-loss", choices=["on", "off"], default="on",
                   help="rnn_lm's fused_loss setting, as in lm_throughput.py")
    p.add_argument("--torch-profiler", action="store_true",
                   help="compare both sides' torch operators instead of cProfile")
    p.add_argument("--host-overhead", action="store_true",
                   help="time nlp.update, the component's own update and the plain loop's step")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating timing rounds under --host-overhead (median counts)")
    p.add_argument("--steps", type=int, default=50,
                   help="steps per side under --torch-profiler, per round under --host-overhead")
    _common.add_common_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import torch

    torch.manual_seed(args.seed)
    device = _common.torch_device(args.gpu_id)
    side = lm_throughput.SpacyRNNSide(args, Path(args.data) / "ptb.train.txt", device)
    if args.host_overhead:
        result = {"benchmark": "profile_lm_host_overhead",
                  **_common.machine_info(threads, device),
                  **host_overhead(args, side, device)}
        _common.emit(result)
        return result
    if args.torch_profiler:
        result = {"benchmark": "profile_lm_operators",
                  **_common.machine_info(threads, device),
                  **compare_operators(args, side, device)}
        _common.emit(result)
        return result
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
        "rnn_lm_clip": args.rnn_lm_clip,
        "rnn_lm_cuda_graphs": args.rnn_lm_cuda_graphs,
        "rnn_lm_fused_loss": args.rnn_lm_fused_loss,
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


def host_overhead(args, spacy_side, device):
    """Milliseconds per training step of each way of driving the update."""
    import statistics

    from spacy.language import _copy_examples

    train_path = Path(args.data) / "ptb.train.txt"
    tokens = lm_throughput.read_tokens(train_path, args.max_train_tokens)
    torch_side = lm_throughput.TorchSide(args, tokens, device)
    nlp, lm, optimizer = spacy_side.nlp, spacy_side.lm, spacy_side.optimizer
    losses = {}

    def component(batch):
        lm.update(batch, losses=losses)
        lm.finish_update(optimizer)

    ways = {
        "nlp_update": lambda batch: nlp.update(batch, sgd=optimizer, losses=losses),
        "component_update": component,
        "spacy_copy_examples": _copy_examples,
    }
    step_tokens = lm_throughput.SIZES["n_streams"] * lm_throughput.SIZES["bptt"]
    times = {name: [] for name in [*ways, "plain_torch_step"]}
    for round_ in range(max(1, args.rounds) + 1):
        batches = [next(spacy_side.batches) for _ in range(args.steps)]
        for name, way in ways.items():
            start = _common.timer(device)
            for batch in batches:
                way(batch)
            elapsed = _common.timer(device) - start
            if round_:  # the first round warms up
                times[name].append(elapsed * 1000 / len(batches))
        # The plain loop runs on its own clock for about as long.
        n, elapsed = torch_side.train_for(times["nlp_update"][-1] * args.steps / 1000 if round_ else 0.2)
        if round_:
            times["plain_torch_step"].append(elapsed * 1000 / (n / step_tokens))
    ms = {name: round(statistics.median(v), 3) for name, v in times.items()}
    return {
        "rnn_lm_clip": args.rnn_lm_clip,
        "rnn_lm_cuda_graphs": args.rnn_lm_cuda_graphs,
        "rnn_lm_fused_loss": args.rnn_lm_fused_loss,
        "steps_per_round": args.steps,
        "rounds": max(1, args.rounds),
        "sizes": {**lm_throughput.SIZES, "vocab_size": args.vocab_size,
                  "embed_width": args.width, "hidden_width": args.width},
        "ms_per_step": ms,
        # What each layer of the stack adds to a step.
        "spacy_language_update_ms": round(ms["nlp_update"] - ms["component_update"], 3),
        "spacy_rnn_over_plain_ms": round(ms["component_update"] - ms["plain_torch_step"], 3),
        "step_ratio": round(ms["plain_torch_step"] / ms["nlp_update"], 3),
        "step_ratio_without_language_update": round(
            ms["plain_torch_step"] / ms["component_update"], 3),
    }


def compare_operators(args, spacy_side, device):
    """torch.profiler over ``args.steps`` training steps of each side."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    train_path = Path(args.data) / "ptb.train.txt"
    tokens = lm_throughput.read_tokens(train_path, args.max_train_tokens)
    torch_side = lm_throughput.TorchSide(args, tokens, device)
    # One step each: the plain loop stops after its first step when given
    # no time, and the rnn_lm side is driven a batch at a time.
    batches = [next(spacy_side.batches) for _ in range(args.steps)]
    losses = {}
    steps = {
        "spacy_rnn": lambda i: spacy_side.nlp.update(
            batches[i], sgd=spacy_side.optimizer, losses=losses),
        "torch": lambda i: torch_side.train_for(0.0),
    }
    for name, step in steps.items():  # warm-up: allocator, cuDNN plans
        for i in range(min(5, args.steps)):
            step(i)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sides = {}
    for name, step in steps.items():
        _common.sync(device)
        start = _common.timer(device)
        for i in range(args.steps):
            step(i)
        unprofiled = (_common.timer(device) - start) * 1000 / args.steps
        with profile(activities=activities) as prof:
            for i in range(args.steps):
                step(i)
            _common.sync(device)
        table = prof.key_averages()
        ops = [e for e in table if e.key.startswith("aten::")]

        def top(attr):
            rows = sorted(table, key=lambda e: -getattr(e, attr))[: args.top]
            return [
                {"op": e.key, "calls_per_step": round(e.count / args.steps, 1),
                 "ms_per_step": round(getattr(e, attr) / 1000 / args.steps, 3)}
                for e in rows if getattr(e, attr) > 0
            ]

        side = {
            "ms_per_step": round(unprofiled, 3),
            "aten_ops_per_step": round(sum(e.count for e in ops) / args.steps, 1),
            # Host time inside torch operators; the rest of ms_per_step is
            # Python (spaCy, spacy-rnn or the loop) and waiting.
            "torch_host_ms_per_step": round(
                sum(e.self_cpu_time_total for e in table) / 1000 / args.steps, 3),
            "top_self_cpu": top("self_cpu_time_total"),
        }
        if device.type == "cuda":
            side["device_ms_per_step"] = round(
                sum(e.self_device_time_total for e in table) / 1000 / args.steps, 3)
            side["kernels_per_step"] = round(
                sum(e.count for e in table if e.self_device_time_total > 0) / args.steps, 1)
            side["top_self_device"] = top("self_device_time_total")
        sides[name] = side
    return {
        "mixed_precision": bool(args.mixed_precision),
        "rnn_lm_clip": args.rnn_lm_clip,
        "rnn_lm_cuda_graphs": args.rnn_lm_cuda_graphs,
        "rnn_lm_fused_loss": args.rnn_lm_fused_loss,
        "steps": args.steps,
        "sizes": {**lm_throughput.SIZES, "vocab_size": args.vocab_size,
                  "embed_width": args.width, "hidden_width": args.width},
        "sides": sides,
        "step_ratio": sides["torch"]["ms_per_step"] / sides["spacy_rnn"]["ms_per_step"],
    }


if __name__ == "__main__":
    main()

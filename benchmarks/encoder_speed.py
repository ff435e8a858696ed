"""Forward+backward speed of exact and inexact BiLSTM (or BiGRU) encodings
of variable-length batches, on Amazon-review lengths (``--inference``:
forward passes only; ``--directions 1``: one-directional encoders).

    python benchmarks/encoder_speed.py --seconds 10 --threads 2
    python benchmarks/encoder_speed.py --cell gru --rnn-kernel torch

With ``--cell gru`` (or ``rnn_tanh``) every method runs GRUs (Elman RNNs);
``RNNStack`` runs them on the CPU through its fused loops unless
``--rnn-kernel torch``.

Compares, on the same sequence of batches (32 docs with lengths sampled from
the real reviews, fresh shapes every batch):

* ``padded_fused``: one bidirectional ``nn.LSTM`` (``nn.GRU``) over the zero-padded batch,
  as spaCy's ``TorchBiLSTMEncoder.v1`` does; its backward direction reads the
  padding, so it is not exact;
* ``pack_padded``: the same module over ``pack_padded_sequence`` (exact);
* ``reverse_boX``: ``RNNStack(method="reverse", bucket_overhead=X)``;
* ``packed``: ``RNNStack(method="packed", bucket_overhead=0)``.

On the CPU, ``RNNStack``'s fused GRU and Elman loops run a whole batch in one
ragged loop and ignore the bucket overhead: every ``reverse_boX`` then runs
the same code, computes only real positions, and the JSON says
``"ragged_cpu_loop": true``.

Prints one JSON object: seconds per batch, exactness (max abs difference
between a doc encoded alone and in its batch), computed positions per real
token, the packed/padded ratio and the fastest bucket overhead.
"""
import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_REVIEWS,
                   help="reviews.jsonl whose token counts give the lengths")
    p.add_argument("--max-reviews", type=int, default=2000,
                   help="tokenize this many reviews for the length distribution (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batches", type=int, default=200, help="max timed batches")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="time budget per method (methods take turns on each batch)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--overheads", default="0,2,4,8,16",
                   help="bucket_overhead values for the 'reverse' method")
    p.add_argument("--max-length", type=int, default=0,
                   help="clip lengths (0: keep the real ones)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn_tanh"], default="lstm")
    p.add_argument("--directions", type=int, choices=[1, 2], default=2,
                   help="one- or two-directional encoders")
    p.add_argument("--inference", action="store_true",
                   help="time forward passes in eval mode without autograd instead of "
                        "forward + backward")
    _common.add_rnn_kernel_arg(p)
    _common.add_common_args(p)
    return p.parse_args(argv)


def review_lengths(path: Path, limit: int):
    import spacy

    tokenizer = spacy.blank("en").tokenizer
    rows = _common.read_review_texts(path, limit)
    return [len(doc) for doc in tokenizer.pipe(r["full_text"] for r in rows)]


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import numpy
    import torch
    from torch import nn

    from spacy_rnn.torch_modules.rnn_stack import (
        CUDA_BUCKET_OVERHEAD, DEFAULT_BUCKET_OVERHEAD, RNNStack, plan_buckets,
    )

    device = _common.torch_device(args.gpu_id)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pool = review_lengths(args.data, args.max_reviews)
    if args.max_length:
        pool = [min(n, args.max_length) for n in pool]
    pool = [n for n in pool if n > 0]
    n_batches = args.batches + args.warmup
    batches = [[rng.choice(pool) for _ in range(args.batch_size)] for _ in range(n_batches)]
    W = args.width
    H = W // 2

    torch_rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[args.cell]
    bidirectional = args.directions == 2
    fused = torch_rnn(W, H if bidirectional else W, 1, batch_first=True,
                      bidirectional=bidirectional).to(device)

    def valid_mask(lengths):
        lengths_np = numpy.asarray(lengths)
        steps = numpy.arange(int(lengths_np.max()))
        valid = steps[None, :] < lengths_np[:, None]
        return torch.as_tensor(valid.reshape(-1), device=device)

    def run_fused(flat, lengths, packed):
        valid = valid_mask(lengths)
        # pad_sequence, as a plain PyTorch user would pad. Before session 10
        # this was `padded_flat[gather]`, whose backward on CUDA sorts the
        # index and accumulates every padding position into one row (the
        # cost that _GatherRows removed from RNNStack).
        X = nn.utils.rnn.pad_sequence(torch.split(flat, lengths), batch_first=True)
        if packed:
            seq = nn.utils.rnn.pack_padded_sequence(
                X, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
            Y, _ = fused(seq)
            Y, _ = nn.utils.rnn.pad_packed_sequence(
                Y, batch_first=True, total_length=X.shape[1])
        else:
            Y, _ = fused(X)
        return Y.reshape(-1, W)[valid]

    overheads = [float(x) for x in args.overheads.split(",") if x.strip()]
    methods = {
        "padded_fused": lambda flat, lengths: run_fused(flat, lengths, packed=False),
        "pack_padded": lambda flat, lengths: run_fused(flat, lengths, packed=True),
    }
    stacks = {}
    for bo in overheads:
        stacks[f"reverse_bo{bo:g}"] = RNNStack(
            W, W, cell=args.cell, method="reverse", bucket_overhead=bo,
            bidirectional=bidirectional)
    stacks["packed"] = RNNStack(W, W, cell=args.cell, method="packed", bucket_overhead=0,
                                bidirectional=bidirectional)
    for name, stack in stacks.items():
        _common.set_rnn_kernel(stack, args.rnn_kernel)
        stack.to(device)
        if args.inference:
            stack.eval()
        methods[name] = stack

    def positions(name, lengths):
        # (positions computed, time steps walked, recurrent calls) per layer
        # and direction for one batch.
        lengths_np = numpy.sort(numpy.asarray(lengths))[::-1]
        longest = int(lengths_np[0])
        if name == "padded_fused":
            return len(lengths) * longest, longest, 1
        if name in ("pack_padded", "packed") or ragged.get(name):
            return int(lengths_np.sum()), longest, 1
        buckets = plan_buckets(lengths_np, stacks[name].bucket_overhead)
        computed = sum((b - a) * lengths_np[a] for a, b in buckets)
        return int(computed), int(sum(lengths_np[a] for a, _ in buckets)), len(buckets)

    # Methods take turns on each batch (in a shuffled order) so that load
    # from other processes hits them alike; a method stops once it has used
    # its time budget, and ratios are taken over the batches both ran.
    times = {name: {} for name in methods}
    ragged = {}
    spent = {name: 0.0 for name in methods}
    computed = {name: 0 for name in methods}
    real = {name: 0 for name in methods}
    walked = {name: 0 for name in methods}
    longest = {name: 0 for name in methods}
    calls = {name: 0 for name in methods}
    order = list(methods)
    for i, lengths in enumerate(batches):
        active = [n for n in order if spent[n] < args.seconds]
        if not active:
            break
        rng.shuffle(active)
        flat_data = torch.randn(sum(lengths), W, device=device)
        for name in active:
            flat = flat_data.clone().requires_grad_(not args.inference)
            with torch.set_grad_enabled(not args.inference):
                if name in stacks:
                    ragged[name] = stacks[name].ragged_loop_applies(flat, lengths)
                start = _common.timer(device)
                Y = methods[name](flat, lengths)
                if not args.inference:
                    Y.sum().backward()
                elapsed = _common.timer(device) - start
            if i < args.warmup:
                continue
            times[name][i] = elapsed
            spent[name] += elapsed
            n_computed, n_walked, n_calls = positions(name, lengths)
            computed[name] += n_computed
            walked[name] += n_walked
            calls[name] += n_calls
            longest[name] += max(lengths)
            real[name] += sum(lengths)

    results = {}
    for name, fn in methods.items():
        t = numpy.asarray(list(times[name].values()))
        results[name] = {
            "seconds_per_batch": float(t.mean()),
            "median_seconds_per_batch": float(numpy.median(t)),
            "batches": int(t.size),
            "tokens_per_s": real[name] / float(t.sum()),
            "computed_positions_per_real_token": computed[name] / max(real[name], 1),
            # Time steps walked per batch over the longest doc's length: the
            # loops' fixed cost per step is paid this many times over.
            "steps_walked_per_longest": walked[name] / max(longest[name], 1),
            "recurrent_calls_per_batch": calls[name] / max(int(t.size), 1),
            "max_abs_diff_alone_vs_batch": exactness(fn, batches[0], W, device),
        }

    def ratio(a, b):
        shared = sorted(set(times[a]) & set(times[b]))
        if not shared:
            return None
        return sum(times[a][i] for i in shared) / sum(times[b][i] for i in shared)

    reverse = {k: v for k, v in results.items() if k.startswith("reverse_bo")}
    # Pick the overhead on the batches every "reverse" variant ran.
    shared = set.intersection(*(set(times[k]) for k in reverse)) if reverse else set()
    reverse_mean = {k: float(numpy.mean([times[k][i] for i in shared])) for k in reverse} if shared else {}
    best = min(reverse_mean, key=reverse_mean.get) if reverse_mean else None
    result = {
        "benchmark": "encoder_speed",
        **_common.machine_info(threads, device),
        "batch_size": args.batch_size,
        "width": W,
        "cell": args.cell,
        "rnn_kernel": None if args.cell == "lstm" else args.rnn_kernel,
        "bidirectional": bidirectional,
        "inference": args.inference,
        "ragged_cpu_loop": any(ragged.values()),
        "length_pool_size": len(pool),
        "mean_length": float(numpy.mean(pool)),
        "max_length": int(max(pool)),
        "methods": results,
        "ratios_note": "time(method) / time(padded_fused) on the batches both ran",
        "packed_vs_padded_ratio": ratio("pack_padded", "padded_fused"),
        "rnnstack_packed_vs_padded_ratio": ratio("packed", "padded_fused"),
        "best_reverse_vs_padded_ratio": ratio(best, "padded_fused") if best else None,
        "reverse_vs_padded_ratios": {k: ratio(k, "padded_fused") for k in reverse},
        "reverse_vs_best_reverse": {k: v / reverse_mean[best] for k, v in reverse_mean.items()},
        "reverse_shared_batches": len(shared),
        "best_bucket_overhead": float(best[len("reverse_bo"):]) if best else None,
        "current_default_bucket_overhead": (
            CUDA_BUCKET_OVERHEAD if device.type == "cuda" else DEFAULT_BUCKET_OVERHEAD),
        "gpu_peak_mb": _common.gpu_peak_mb(device),
    }
    _common.emit(result)
    return result


def exactness(fn, lengths, W, device):
    """Max abs difference between each doc encoded alone and in the batch."""
    import torch

    with torch.no_grad():
        flat = torch.randn(sum(lengths), W, device=device)
        Y = fn(flat, lengths)
        worst = 0.0
        start = 0
        for n in lengths:
            alone = fn(flat[start : start + n], [n])
            worst = max(worst, float((alone - Y[start : start + n]).abs().max()))
            start += n
    return worst


if __name__ == "__main__":
    main()

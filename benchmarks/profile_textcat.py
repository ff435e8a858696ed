"""Where the time goes in ``rnn_textcat`` training and inference (cProfile).

    python benchmarks/profile_textcat.py --steps 30 --threads 2

Trains the default ``rnn_textcat`` (BiLSTM 128) on Amazon reviews for
``--steps`` updates, then runs inference over ``--infer-docs`` docs, each
under cProfile. Prints one JSON object with, per phase, the top functions by
own time, own time grouped by library (torch, thinc, spacy, spacy_rnn,
numpy, other) and the time spent in spacy-rnn's own Python layers
(pooling, the encoder's conversions). ``--out-dir`` also writes the raw
``.prof`` files for snakeviz / pstats.

    python benchmarks/profile_textcat.py --torch-profiler --gpu-id 0 \
        --models rnn_bilstm,torch_bilstm

``--torch-profiler`` instead runs ``torch.profiler`` over the same training
steps and inference batches of each model in ``--models`` (names as in
``textcat_bench.py``), one after the other in this process: ms per step
unprofiled, torch operators and GPU kernels per step, host time inside
torch, GPU busy time, and the top operators by host and by GPU time. It
shows whether a model is bound by the host (launches, Python) or by the
GPU. ``--rnn-bucket-overhead`` overrides the encoder's bucket cost
constant (16 on CUDA, 4 on CPU) for the spacy-rnn models.
"""
import argparse
import cProfile
import pstats
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# Matched in order against "filename:function"; Cython modules report
# package-relative paths ("thinc/backends/numpy_ops.pyx"), hence no
# "site-packages/" prefix.
GROUPS = (
    ("spacy_rnn", ("spacy_rnn/",)),
    ("torch", ("torch/", "<built-in method torch.", "torch._C")),
    ("thinc", ("thinc/",)),
    ("spacy", ("spacy/",)),
    ("numpy", ("numpy/", "numpy.")),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_REVIEWS)
    p.add_argument("--max-docs", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--infer-docs", type=int, default=500)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--cell", default="lstm")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--torch-profiler", action="store_true",
                   help="compare the --models' torch operators instead of cProfile")
    p.add_argument("--models", default="rnn_bilstm,torch_bilstm",
                   help="models for --torch-profiler, as in textcat_bench.py")
    p.add_argument("--rnn-bucket-overhead", type=float, default=None,
                   help="override RNNStack.bucket_overhead (--torch-profiler)")
    _common.add_common_args(p)
    _common.add_gemm_arg(p)
    _common.add_rnn_kernel_arg(p)
    return p.parse_args(argv)


def group_of(filename: str, funcname: str) -> str:
    where = f"{filename}:{funcname}"
    for name, needles in GROUPS:
        if any(n in where for n in needles):
            return name
    return "other"


# Cumulative time of the parts worth naming: (file fragment, function names).
PARTS = {
    "embed_maxout": ("thinc/layers/maxout.py", ("forward", "backprop")),
    "embed_concatenate": ("thinc/layers/concatenate.py", ("forward",)),
    "rnn_encoder_forward": ("spacy_rnn/layers/rnn_encoder.py", ("forward",)),
    "rnn_encoder_backprop": ("spacy_rnn/layers/rnn_encoder.py", ("backprop",)),
    "pooling": ("spacy_rnn/layers/pooling.py", ("forward", "backprop")),
    "spacy_copy_examples": ("spacy/language.py", ("_copy_examples",)),
    "optimizer_adam": ("thinc/backends/numpy_ops.pyx", ("adam",)),
    "tokenizer": ("spacy/tokenizer.pyx", ("__call__",)),
}


def summarise(profile: cProfile.Profile, top: int):
    stats = pstats.Stats(profile)
    total = stats.total_tt
    rows = []
    by_group = {}
    spacy_rnn_funcs = {}
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        group = group_of(filename, func)
        by_group[group] = by_group.get(group, 0.0) + tt
        short = filename.split("site-packages/")[-1].split(f"{_common.ROOT.as_posix()}/")[-1]
        name = f"{short}:{line}({func})"
        rows.append((tt, ct, nc, name))
        if group == "spacy_rnn":
            spacy_rnn_funcs[name] = {"own_s": tt, "cumulative_s": ct, "calls": nc}
    parts = {}
    for part, (fragment, funcs) in PARTS.items():
        parts[part] = sum(
            ct for (filename, _, func), (_, _, _, ct, _) in stats.stats.items()
            if fragment in filename and func in funcs
        )
    rows.sort(reverse=True)
    cumulative = sorted(rows, key=lambda r: -r[1])
    return {
        "total_s": total,
        "own_time_by_library": {k: {"s": v, "share": v / total} for k, v in
                                sorted(by_group.items(), key=lambda kv: -kv[1])},
        "parts_cumulative": {k: {"s": v, "share": v / total} for k, v in parts.items()},
        "top_own_time": [{"function": n, "own_s": tt, "cumulative_s": ct, "calls": nc}
                         for tt, ct, nc, n in rows[:top]],
        "top_cumulative": [{"function": n, "cumulative_s": ct, "calls": nc}
                           for tt, ct, nc, n in cumulative[:top]],
        "spacy_rnn_own_time": dict(sorted(spacy_rnn_funcs.items(),
                                          key=lambda kv: -kv[1]["own_s"])[:top]),
    }


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import spacy
    import torch
    from spacy.training import Example
    from spacy.util import minibatch
    from thinc.api import fix_random_seed

    import spacy_rnn  # noqa: F401
    from spacy_rnn.pipeline.textcat import DEFAULT_RNN_TEXTCAT_MODEL_CONFIG
    from thinc.api import Config

    device = _common.torch_device(args.gpu_id)
    if device.type == "cuda":
        spacy.require_gpu(args.gpu_id)
    if args.torch_profiler:
        result = {"benchmark": "profile_textcat_operators",
                  **_common.machine_info(threads, device),
                  **compare_operators(args, device)}
        _common.emit(result)
        return result
    fix_random_seed(args.seed)
    rng = random.Random(args.seed)
    model = Config().from_str(DEFAULT_RNN_TEXTCAT_MODEL_CONFIG)["model"]
    model["pooling"] = args.pooling
    model["tok2vec"]["encode"]["cell"] = args.cell
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("rnn_textcat", config={"model": model})
    _common.apply_gemm(nlp, args)
    _common.apply_rnn_kernel(nlp, args)
    rows = _common.read_review_texts(args.data, args.max_docs)
    examples = []
    for row, doc in zip(rows, nlp.tokenizer.pipe(r["full_text"] for r in rows)):
        pos = float(row["label"] == "positive")
        examples.append(Example.from_dict(doc, {"cats": {"positive": pos, "negative": 1 - pos}}))
    for label in ("positive", "negative"):
        textcat.add_label(label)
    optimizer = nlp.initialize(lambda: examples)
    batches = []
    while len(batches) < args.steps + 2:
        rng.shuffle(examples)
        batches.extend(minibatch(examples, size=args.batch_size))
    for batch in batches[:2]:  # warm-up, outside the profile
        nlp.update(batch, sgd=optimizer, drop=0.2)

    train_prof = cProfile.Profile()
    words = 0
    train_prof.enable()
    for batch in batches[2 : 2 + args.steps]:
        nlp.update(batch, sgd=optimizer, drop=0.2)
    _common.sync(device)
    train_prof.disable()
    words = sum(len(eg.predicted) for b in batches[2 : 2 + args.steps] for eg in b)

    texts = [r["full_text"] for r in rows[: args.infer_docs]]
    list(nlp.pipe(texts[:64]))
    infer_prof = cProfile.Profile()
    infer_prof.enable()
    docs = list(nlp.pipe(texts, batch_size=256))
    _common.sync(device)
    infer_prof.disable()
    infer_words = sum(len(d) for d in docs)

    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        train_prof.dump_stats(str(args.out_dir / "train.prof"))
        infer_prof.dump_stats(str(args.out_dir / "infer.prof"))
    train = summarise(train_prof, args.top)
    infer = summarise(infer_prof, args.top)
    result = {
        "benchmark": "profile_textcat",
        **_common.machine_info(threads, device),
        "pooling": args.pooling,
        "cell": args.cell,
        "gemm": args.gemm,
        "rnn_kernel": args.rnn_kernel,
        "profiler_note": "cProfile adds overhead per Python call; shares matter, not absolute s",
        "train": {"steps": args.steps, "words": words,
                  "words_per_s_under_profiler": words / train["total_s"], **train},
        "infer": {"docs": len(docs), "words": infer_words,
                  "words_per_s_under_profiler": infer_words / infer["total_s"], **infer},
        "torch_threads": torch.get_num_threads(),
    }
    _common.emit(result)
    return result


def compare_operators(args, device):
    """torch.profiler over ``args.steps`` training steps and the inference
    of ``args.infer_docs`` docs, for each of ``args.models``."""
    import spacy
    from spacy.training import Example
    from spacy.util import minibatch
    from thinc.api import fix_random_seed
    from torch.profiler import ProfilerActivity, profile

    import textcat_bench

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    rows = _common.read_review_texts(args.data, args.max_docs)
    texts = [r["full_text"] for r in rows]
    models = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        fix_random_seed(args.seed)
        factory, config = textcat_bench.model_setup(name)
        nlp = spacy.blank("en")
        nlp.add_pipe(factory, name="textcat", config=config)
        _set_bucket_overhead(nlp, args.rnn_bucket_overhead)
        _common.apply_gemm(nlp, args)
        _common.apply_rnn_kernel(nlp, args)
        examples = []
        for row, doc in zip(rows, nlp.tokenizer.pipe(texts)):
            pos = float(row["label"] == "positive")
            examples.append(Example.from_dict(
                doc, {"cats": {"positive": pos, "negative": 1 - pos}}))
        for label in textcat_bench.LABELS:
            nlp.get_pipe("textcat").add_label(label)
        optimizer = nlp.initialize(lambda: examples)
        # The same batches, in the same order, for every model.
        rng = random.Random(args.seed)
        batches = []
        while len(batches) < 2 * args.steps + 5:
            rng.shuffle(examples)
            batches.extend(minibatch(examples, size=args.batch_size))
        warm, timed, profiled = (batches[:5], batches[5 : 5 + args.steps],
                                 batches[5 + args.steps : 5 + 2 * args.steps])
        for batch in warm:  # allocator, cuDNN plans
            nlp.update(batch, sgd=optimizer, drop=0.2)
        start = _common.timer(device)
        for batch in timed:
            nlp.update(batch, sgd=optimizer, drop=0.2)
        train_s = _common.timer(device) - start
        with profile(activities=activities) as prof:
            for batch in profiled:
                nlp.update(batch, sgd=optimizer, drop=0.2)
            _common.sync(device)
        train = _operator_summary(prof, args.steps, args.top, device)
        train["ms_per_step"] = round(train_s * 1000 / args.steps, 3)
        train["words_per_s"] = round(sum(len(eg.predicted) for b in timed for eg in b) / train_s)
        infer_texts = texts[: args.infer_docs]
        n_batches = -(-len(infer_texts) // 256)
        list(nlp.pipe(infer_texts[:256], batch_size=256))
        start = _common.timer(device)
        docs = list(nlp.pipe(infer_texts, batch_size=256))
        infer_s = _common.timer(device) - start
        with profile(activities=activities) as prof:
            list(nlp.pipe(infer_texts, batch_size=256))
            _common.sync(device)
        infer = _operator_summary(prof, n_batches, args.top, device)
        infer["ms_per_batch"] = round(infer_s * 1000 / n_batches, 3)
        infer["words_per_s"] = round(sum(len(d) for d in docs) / infer_s)
        models[name] = {"train_per_step": train, "infer_per_batch_of_256": infer}
        del nlp, optimizer
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "infer_docs": args.infer_docs,
        "rnn_bucket_overhead": args.rnn_bucket_overhead,
        "gemm": args.gemm,
        "rnn_kernel": args.rnn_kernel,
        "models": models,
    }


def _operator_summary(prof, n, top, device):
    table = prof.key_averages()
    ops = [e for e in table if e.key.startswith("aten::")]

    def best(attr):
        rows = sorted(table, key=lambda e: -getattr(e, attr))[:top]
        return [{"op": e.key, "calls": round(e.count / n, 1),
                 "ms": round(getattr(e, attr) / 1000 / n, 3)}
                for e in rows if getattr(e, attr) > 0]

    summary = {
        "aten_ops": round(sum(e.count for e in ops) / n, 1),
        # Host time inside torch operators; the rest of the step is Python
        # (spaCy, Thinc, spacy-rnn) and waiting for the GPU.
        "torch_host_ms": round(sum(e.self_cpu_time_total for e in table) / 1000 / n, 3),
        "top_self_cpu": best("self_cpu_time_total"),
    }
    if device.type == "cuda":
        summary["device_ms"] = round(
            sum(e.self_device_time_total for e in table) / 1000 / n, 3)
        summary["kernels"] = round(
            sum(e.count for e in table if e.self_device_time_total > 0) / n, 1)
        summary["top_self_device"] = best("self_device_time_total")
    return summary


def _set_bucket_overhead(nlp, overhead):
    if overhead is None:
        return
    for stack in _common.rnn_stacks(nlp):
        stack.bucket_overhead = float(overhead)


if __name__ == "__main__":
    main()

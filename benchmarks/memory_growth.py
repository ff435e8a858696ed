"""Resident memory over training steps: does a long ``spacy train`` run grow?

    python benchmarks/memory_growth.py --steps 1500

Trains an ``rnn_textcat`` BiLSTM (on the Amazon reviews when they are there,
else on the bundled fixture) and an ``rnn_lm`` (PTB, or the bundled stream
fixture) with ``nlp.update`` and Thinc's Adam, sampling the process's RSS
every ``--every`` steps. Each model is trained twice, in separate
subprocesses: once with spacy-rnn's shim and once with Thinc's stock
``PyTorchShim.finish_update`` put back, which assigns a new tensor to each
parameter's ``.data`` on every step. The JSON gives the RSS curve of each run
and its growth in MiB per 1,000 steps, fitted over the second half of the run
(after allocator warm-up). A run stops early once its RSS passes
``--max-rss-mb``, so the stock shim cannot exhaust the machine.
"""
import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

FIXTURE_REVIEWS = _common.ROOT / "assets" / "fixtures" / "reviews_tiny.jsonl"
FIXTURE_STREAM = _common.ROOT / "assets" / "fixtures" / "stream_tiny.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=50, help="sample RSS every N steps")
    p.add_argument("--max-rss-mb", type=float, default=6000,
                   help="stop a run early once its RSS passes this (the stock shim grows fast)")
    p.add_argument("--reviews", type=Path, default=_common.DEFAULT_REVIEWS)
    p.add_argument("--ptb", type=Path, default=_common.DEFAULT_PTB)
    p.add_argument("--models", default="textcat,lm")
    p.add_argument("--lm-width", type=int, default=200, help="rnn_lm embedding and LSTM width")
    p.add_argument("--child", default=None, choices=["textcat", "lm"],
                   help="run one model in this process and print its JSON (what the parent runs)")
    p.add_argument("--stock-shim", action="store_true",
                   help="with --child: put Thinc's PyTorchShim.finish_update back")
    p.add_argument("--malloc-trim-every", type=int, default=0,
                   help="with --child: call glibc's malloc_trim(0) every N steps (0: never)")
    _common.add_common_args(p, gpu=False)
    return p.parse_args(argv)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def _use_stock_shim(nlp) -> None:
    import types

    from thinc.api import PyTorchShim

    for _, proc in nlp.pipeline:
        for node in proc.model.walk():
            for shim in node.shims:
                if isinstance(shim, PyTorchShim):
                    shim.finish_update = types.MethodType(PyTorchShim.finish_update, shim)


def _textcat_batches(nlp, args):
    from spacy.training import Example

    path = args.reviews if args.reviews.exists() else FIXTURE_REVIEWS
    rows = _common.read_review_texts(path, limit=2000)
    rng = random.Random(args.seed)
    examples = []
    for row in rows:
        doc = nlp.make_doc(row["full_text"][:2000])
        pos = row["label"] == "positive"
        examples.append(Example.from_dict(doc, {"cats": {"positive": float(pos), "negative": float(not pos)}}))
    while True:
        rng.shuffle(examples)
        for i in range(0, len(examples) - 15, 16):
            yield examples[i : i + 16]


def _lm_batches(nlp, args):
    from spacy_rnn.corpus.token_stream import TokenStreamCorpus

    path = args.ptb / "ptb.train.txt"
    path = path if path.exists() else FIXTURE_STREAM
    corpus = TokenStreamCorpus(path, n_streams=20, doc_length=35)
    while True:
        batch = []
        for eg in corpus(nlp):
            batch.append(eg)
            if len(batch) == 20:
                yield batch
                batch = []


def run_child(args) -> dict:
    _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import spacy
    import torch
    from thinc.api import Adam

    import spacy_rnn  # noqa: F401

    torch.manual_seed(args.seed)
    nlp = spacy.blank("en")
    if args.child == "textcat":
        proc = nlp.add_pipe("rnn_textcat")
        proc.add_label("positive")
        proc.add_label("negative")
        batches = _textcat_batches(nlp, args)
        first = next(batches)
        nlp.initialize(lambda: iter(first))
    else:
        path = args.ptb / "ptb.train.txt"
        path = path if path.exists() else FIXTURE_STREAM
        proc = nlp.add_pipe("rnn_lm", config={"vocab_size": 10000, "embed_width": args.lm_width,
                                               "hidden_width": args.lm_width, "depth": 2, "bptt": 35})
        proc.initialize(lambda: iter([]), nlp=nlp, vocab_path=str(path))
        batches = _lm_batches(nlp, args)
    if args.stock_shim:
        _use_stock_shim(nlp)
    optimizer = Adam(0.001)
    trim = None
    if args.malloc_trim_every:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    curve = []
    for step in range(1, args.steps + 1):
        nlp.update(next(batches), sgd=optimizer, losses={})
        if trim is not None and step % args.malloc_trim_every == 0:
            trim(0)
        if step % args.every == 0:
            curve.append([step, round(current_rss_mb(), 1)])
            if curve[-1][1] > args.max_rss_mb:
                break
    last_step = curve[-1][0] if curve else 0
    half = [p for p in curve if p[0] >= last_step / 2]
    slope = None
    if len(half) >= 2:
        xs = [p[0] for p in half]
        ys = [p[1] for p in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    n_params = sum(
        p.numel() for _, pr in nlp.pipeline for node in pr.model.walk()
        for s in node.shims for p in s._model.parameters()
    )
    return {
        "model": args.child,
        "shim": "thinc_stock" if args.stock_shim else "spacy_rnn",
        "malloc_trim_every": args.malloc_trim_every,
        "torch_params": n_params,
        "steps_run": last_step,
        "stopped_at_rss_limit": last_step < args.steps,
        "rss_mb_curve": curve,
        "growth_mb_per_1000_steps": None if slope is None else round(slope * 1000, 1),
        "peak_rss_mb": round(_common.peak_rss_mb(), 1),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        _common.quiet_stdout()
        _common.emit(run_child(args), indent=None)
        return
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import torch

    runs = []
    for model in args.models.split(","):
        for stock in (False, True):
            cmd = [sys.executable, __file__, "--child", model, "--steps", str(args.steps),
                   "--every", str(args.every), "--reviews", str(args.reviews),
                   "--ptb", str(args.ptb), "--threads", str(threads), "--seed", str(args.seed),
                   "--max-rss-mb", str(args.max_rss_mb), "--lm-width", str(args.lm_width)]
            if stock:
                cmd.append("--stock-shim")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    result = {
        "benchmark": "memory_growth",
        **_common.machine_info(threads, torch.device("cpu")),
        "steps": args.steps,
        "runs": runs,
    }
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()

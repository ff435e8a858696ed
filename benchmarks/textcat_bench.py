"""Text classification on the Amazon reviews: spacy-rnn against spaCy's own
text classifiers, same split, same run, same training budget.

    python benchmarks/textcat_bench.py --seconds 120 --threads 2
    python benchmarks/textcat_bench.py --epochs 2 --models rnn_bilstm,bow
    python benchmarks/textcat_bench.py --seconds 5 --max-train 500   # quick

Models (``--models``, comma-separated):

* ``rnn_bilstm``: ``rnn_textcat`` with its default model (MultiHashEmbed 128,
  BiLSTM 128, mean pooling);
* ``rnn_gru``: the same with ``cell = "gru"``;
* ``rnn_bigru_attention`` (not in the default list): the model of
  ``configs/textcat_bigru_attention.cfg`` on the default embedding: a
  2-layer BiGRU with attention pooling;
* ``rnn_bilstm_mixed`` (not in the default list): ``rnn_bilstm`` with
  ``encode.mixed_precision = true`` (bfloat16 autocast on CPU, float16 with
  loss scaling on CUDA);
* ``bow``: ``textcat`` with ``spacy.TextCatBOW.v3`` (unigrams);
* ``ensemble``: ``textcat`` with ``spacy.TextCatEnsemble.v2`` (spaCy's
  default: CNN tok2vec + BOW);
* ``torch_bilstm``: ``textcat`` with ``spacy.TextCatReduce.v1`` (mean) over a
  ``spacy.Tok2Vec.v2`` whose encoder is ``spacy.TorchBiLSTMEncoder.v1``, with
  the same embedding as ``rnn_bilstm``;
* ``plain_torch``: ``rnn_bilstm``'s model, features and optimiser written in
  plain PyTorch with its own training loop and ``pack_padded_sequence``
  (``_plain_textcat.py``): what the same work costs without spaCy, Thinc or
  spacy-rnn;
* ``plain_torch_gru`` and ``plain_torch_bigru_attention`` (not in the
  default list): the same for ``rnn_gru`` and ``rnn_bigru_attention``;
* ``plain_torch_padded`` (not in the default list): ``plain_torch`` over the
  zero-padded batch, as ``TorchBiLSTMEncoder.v1`` does (not exact for
  bidirectional layers).

The JSON's ``vs_plain_torch`` gives each spacy-rnn model's words/s over its
plain PyTorch counterpart (``PLAIN_COUNTERPART``), where both ran.

Every model trains in its own subprocess (so its peak RSS is its own) with
the same optimizer (spaCy's default Adam), batch size, dropout and budget
(``--seconds`` of update time, or ``--epochs``). The first ``--warmup-steps``
updates train but are not timed; the rest are timed ``--time-block`` at a
time (one GPU synchronisation per block), and inference repeats whole passes
over the test set for ``--infer-seconds``. Prints one JSON object:
per model, training and inference words/s, test accuracy and macro F,
peak RSS, and for the spacy-rnn models on CPU the int8 (``quantize``)
inference speed and accuracy, with the int8/float32 speed ratio.
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = ("rnn_bilstm", "rnn_gru", "bow", "ensemble", "torch_bilstm", "plain_torch")
EXTRA_MODELS = ("rnn_bilstm_mixed", "rnn_bigru_attention", "plain_torch_padded",
                "plain_torch_gru", "plain_torch_bigru_attention")
# PlainTextcat's settings for each plain PyTorch model.
PLAIN_MODELS = {
    "plain_torch": {},
    "plain_torch_padded": {"packed": False},
    "plain_torch_gru": {"cell": "gru"},
    "plain_torch_bigru_attention": {"cell": "gru", "depth": 2, "pooling": "attention"},
}
# The plain model that does each spacy-rnn model's work.
PLAIN_COUNTERPART = {
    "rnn_bilstm": "plain_torch",
    "rnn_bilstm_mixed": "plain_torch",
    "rnn_gru": "plain_torch_gru",
    "rnn_bigru_attention": "plain_torch_bigru_attention",
}
LABELS = ("positive", "negative")

EMBED = {
    "@architectures": "spacy.MultiHashEmbed.v2",
    "width": 128,
    "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
    "rows": [5000, 1000, 2500, 2500],
    "include_static_vectors": False,
}
BOW = {
    "@architectures": "spacy.TextCatBOW.v3",
    "exclusive_classes": True,
    "length": 262144,
    "ngram_size": 1,
    "no_output_layer": False,
}


def model_setup(name: str):
    """(factory, component config) of a benchmarked model; (None,
    PlainTextcat settings) for the plain PyTorch ones."""
    if name in PLAIN_MODELS:
        return None, dict(PLAIN_MODELS[name])
    if name == "rnn_bilstm":
        return "rnn_textcat", {}
    if name in ("rnn_gru", "rnn_bilstm_mixed", "rnn_bigru_attention"):
        from spacy_rnn.pipeline.textcat import DEFAULT_RNN_TEXTCAT_MODEL_CONFIG
        from thinc.api import Config

        model = Config().from_str(DEFAULT_RNN_TEXTCAT_MODEL_CONFIG)["model"]
        if name == "rnn_bilstm_mixed":
            model["tok2vec"]["encode"]["mixed_precision"] = True
        else:
            model["tok2vec"]["encode"]["cell"] = "gru"
        if name == "rnn_bigru_attention":
            model["tok2vec"]["encode"]["depth"] = 2
            model["pooling"] = "attention"
        return "rnn_textcat", {"model": model}
    if name == "bow":
        return "textcat", {"model": dict(BOW)}
    if name == "ensemble":
        return "textcat", {
            "model": {
                "@architectures": "spacy.TextCatEnsemble.v2",
                "tok2vec": {
                    "@architectures": "spacy.Tok2Vec.v2",
                    "embed": {
                        "@architectures": "spacy.MultiHashEmbed.v2",
                        "width": 64,
                        "rows": [2000, 2000, 500, 1000, 500],
                        "attrs": ["NORM", "LOWER", "PREFIX", "SUFFIX", "SHAPE"],
                        "include_static_vectors": False,
                    },
                    "encode": {
                        "@architectures": "spacy.MaxoutWindowEncoder.v2",
                        "width": 64,
                        "window_size": 1,
                        "maxout_pieces": 3,
                        "depth": 2,
                    },
                },
                "linear_model": dict(BOW),
            }
        }
    if name == "torch_bilstm":
        return "textcat", {
            "model": {
                "@architectures": "spacy.TextCatReduce.v1",
                "exclusive_classes": True,
                "use_reduce_first": False,
                "use_reduce_last": False,
                "use_reduce_max": False,
                "use_reduce_mean": True,
                "tok2vec": {
                    "@architectures": "spacy.Tok2Vec.v2",
                    "embed": dict(EMBED),
                    "encode": {
                        "@architectures": "spacy.TorchBiLSTMEncoder.v1",
                        "width": 128,
                        "depth": 1,
                        "dropout": 0.0,
                    },
                },
            }
        }
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS + EXTRA_MODELS)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_REVIEWS,
                   help="reviews.jsonl (converted with the fixed split)")
    p.add_argument("--corpus-dir", type=Path, default=None,
                   help="folder with train/dev/test.spacy (default: convert --data "
                        "into a cache folder under the temp dir)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seconds", type=float, default=60.0,
                   help="training budget per model, in seconds of updates")
    p.add_argument("--epochs", type=int, default=0,
                   help="train this many epochs instead of --seconds")
    p.add_argument("--max-train", type=int, default=0, help="use the first N train docs (0: all)")
    p.add_argument("--max-eval", type=int, default=0, help="use the first N test docs (0: all)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (docs)")
    p.add_argument("--infer-batch-size", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--warmup-steps", type=int, default=3,
                   help="first updates that train but are not timed (kernel compilation, "
                        "allocator and cuDNN warm-up)")
    p.add_argument("--time-block", type=int, default=10,
                   help="updates timed together, one GPU synchronisation per block")
    p.add_argument("--infer-seconds", type=float, default=2.0,
                   help="repeat the inference pass over the test set until this much time")
    p.add_argument("--gpu-allocator", choices=["pytorch", "cupy"], default="pytorch",
                   help="with --gpu-id: Thinc's CuPy arrays from PyTorch's allocator (gpu_peak_mb "
                        "then counts every model in full) or from CuPy's own pool (spaCy's "
                        "default, gpu_allocator = null; gpu_peak_mb then counts torch's "
                        "allocations only)")
    p.add_argument("--no-quantize", action="store_true",
                   help="skip the int8 measurement of the spacy-rnn models")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    _common.add_common_args(p)
    _common.add_gemm_arg(p)
    _common.add_rnn_kernel_arg(p)
    return p.parse_args(argv)


def ensure_corpus(args) -> Path:
    if args.corpus_dir is not None and (args.corpus_dir / "test.spacy").exists():
        return args.corpus_dir
    target = args.corpus_dir or Path(tempfile.gettempdir()) / "spacy-rnn-bench" / (
        "amazon-%08x" % zlib.crc32(str(Path(args.data).resolve()).encode("utf8"))
    )
    if not (target / "test.spacy").exists():
        from spacy_rnn.corpus.amazon import convert_amazon

        print(f"converting {args.data} into {target}", file=sys.stderr)
        convert_amazon(str(args.data), target)
    return target


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _common.quiet_stdout()
    if args.child:
        return run_child(args)
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    corpus = ensure_corpus(args)
    import torch

    device = _common.torch_device(args.gpu_id) if args.gpu_id >= 0 else torch.device("cpu")
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model_setup(name)  # fail early on a bad name
        child_argv = [sys.executable, __file__, *argv, "--child", name,
                      "--corpus-dir", str(corpus), "--threads", str(threads)]
        start = time.perf_counter()
        proc = subprocess.run(child_argv, capture_output=True, text=True)
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
            sys.stderr.write(proc.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name]["wall_seconds"] = time.perf_counter() - start
    ok = {k: v for k, v in results.items() if "error" not in v}
    result = {
        "benchmark": "textcat_bench",
        **_common.machine_info(threads, device),
        "corpus": str(corpus),
        "budget": {"epochs": args.epochs} if args.epochs else {"seconds": args.seconds},
        "batch_size": args.batch_size,
        "dropout": args.dropout,
        "max_train": args.max_train,
        "gemm": args.gemm,
        "rnn_kernel": args.rnn_kernel,
        "models": results,
        "summary": {
            name: {
                "train_words_per_s": r["train_words_per_s"],
                "infer_words_per_s": r["infer_words_per_s"],
                "accuracy": r["accuracy"],
                "peak_rss_mb": r["peak_rss_mb"],
                "int8_vs_float32_infer_ratio": r.get("int8", {}).get("infer_ratio"),
            }
            for name, r in ok.items()
        },
    }
    vs_plain = {}
    for name, r in ok.items():
        plain = ok.get(PLAIN_COUNTERPART.get(name))
        if plain and r.get("train_words_per_s") and plain.get("train_words_per_s"):
            vs_plain[name] = {
                "against": PLAIN_COUNTERPART[name],
                "train_ratio": r["train_words_per_s"] / plain["train_words_per_s"],
                "infer_ratio": r["infer_words_per_s"] / plain["infer_words_per_s"],
            }
    if vs_plain:
        result["vs_plain_torch"] = vs_plain
    _common.emit(result)
    return result


def run_child(args):
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import numpy
    import spacy
    import torch
    from spacy.scorer import Scorer
    from spacy.training import Corpus, Example
    from spacy.util import minibatch
    from thinc.api import fix_random_seed

    import spacy_rnn  # noqa: F401

    gpu = args.gpu_id >= 0
    if gpu:
        from thinc.api import set_gpu_allocator

        spacy.require_gpu(args.gpu_id)
        if args.gpu_allocator == "pytorch":
            # Thinc's CuPy arrays (spaCy's own textcat models, every
            # embedding) then come from PyTorch's allocator, as with spaCy's
            # `gpu_allocator = "pytorch"`, so gpu_peak_mb counts every
            # model's memory and not only its torch part.
            set_gpu_allocator("pytorch")
        torch.cuda.reset_peak_memory_stats()
    device = torch.device("cuda", args.gpu_id) if gpu else torch.device("cpu")
    fix_random_seed(args.seed)
    rng = random.Random(args.seed)
    factory, config = model_setup(args.child)
    nlp = spacy.blank("en")
    corpus = Path(args.corpus_dir)
    train = list(Corpus(str(corpus / "train.spacy"), limit=args.max_train)(nlp))
    test = list(Corpus(str(corpus / "test.spacy"), limit=args.max_eval)(nlp))
    if factory is None:
        from _plain_textcat import PlainTextcat, PlainTrainer, gold_labels, plain_pipe

        trainer = PlainTrainer(PlainTextcat(len(LABELS), **config).to(device))
        gemm_layers = rnn_stacks = 0

        def update(batch, losses):
            loss = trainer.update([eg.predicted for eg in batch], gold_labels(batch, LABELS), args.dropout)
            losses["textcat"] = losses.get("textcat", 0.0) + float(loss)

        def pipe(texts):
            return plain_pipe(nlp, trainer, texts, LABELS, args.infer_batch_size)
    else:
        nlp.add_pipe(factory, name="textcat", config=config)
        gemm_layers = _common.apply_gemm(nlp, args)
        rnn_stacks = _common.apply_rnn_kernel(nlp, args)
        for label in LABELS:
            nlp.get_pipe("textcat").add_label(label)
        optimizer = nlp.initialize(lambda: train)

        def update(batch, losses):
            nlp.update(batch, drop=args.dropout, sgd=optimizer, losses=losses)

        def pipe(texts):
            return list(nlp.pipe(texts, batch_size=args.infer_batch_size))

    train_time = 0.0
    train_words = 0
    epochs = 0.0
    steps = 0
    losses = {}
    done = False
    # The first --warmup-steps updates train but are not timed: on a fresh
    # GPU machine they include CuPy compiling its kernels, which halved one
    # model's words/s in a 20 s run (session 10). Then updates are timed
    # --time-block at a time, with one GPU synchronisation per block, so the
    # host may queue a step while the GPU finishes the last (as in `spacy
    # train`); a synchronisation around every update made GPU steps ~40 ms
    # where the same steps took 21-25 ms unsynchronised.
    block = None  # (start time, updates, words) of the open timed block

    def close_block():
        nonlocal block, train_time, train_words
        if block is not None:
            train_time += _common.timer(device) - block[0]
            train_words += block[2]
            block = None

    while not done:
        rng.shuffle(train)
        batches = list(minibatch(train, size=args.batch_size))
        for i, batch in enumerate(batches):
            timed = steps >= args.warmup_steps
            if timed and block is None:
                block = (_common.timer(device), 0, 0)
            update(batch, losses)
            steps += 1
            if timed:
                block = (block[0], block[1] + 1, block[2] + sum(len(eg.predicted) for eg in batch))
                if block[1] >= args.time_block:
                    close_block()
            if not args.epochs and train_time >= args.seconds:
                epochs += (i + 1) / len(batches)
                done = True
                break
        else:
            epochs += 1
            done = bool(args.epochs) and epochs >= args.epochs
    close_block()

    texts = [eg.reference.text for eg in test]
    pipe(texts[: args.infer_batch_size])
    # Whole passes over the test set until --infer-seconds have gone by: one
    # pass of 400 docs on a GPU is a few tenths of a second, too short to time.
    infer_time = 0.0
    infer_words = 0
    infer_passes = 0
    while infer_passes == 0 or infer_time < args.infer_seconds:
        start = _common.timer(device)
        docs = pipe(texts)
        infer_time += _common.timer(device) - start
        infer_words += sum(len(doc) for doc in docs)
        infer_passes += 1
    scored = [Example(doc, eg.reference) for doc, eg in zip(docs, test)]
    scores = Scorer.score_cats(scored, "cats", labels=list(LABELS), multi_label=False)
    acc = _accuracy([d.cats for d in docs], test)
    result = {
        "factory": factory or "plain PyTorch",
        "threads": threads,
        "train_docs": len(train),
        "test_docs": len(test),
        "epochs": round(epochs, 3),
        "steps": steps,
        "warmup_steps": min(steps, args.warmup_steps),
        "time_block": args.time_block,
        "infer_passes": infer_passes,
        "final_loss": float(sum(losses.values())),
        "train_seconds": train_time,
        "train_words_per_s": train_words / train_time if train_time else None,
        "infer_words_per_s": infer_words / infer_time,
        "accuracy": acc,
        "macro_f": scores["cats_score"],
        "peak_rss_mb": _common.peak_rss_mb(),
        "gpu_peak_mb": _common.gpu_peak_mb(device),
        "gpu_allocator": args.gpu_allocator if gpu else None,
        "gemm_layers_switched": gemm_layers,
        "rnn_stacks": rnn_stacks,
    }
    if factory == "rnn_textcat" and not gpu and not args.no_quantize:
        result["int8"] = _int8_inference(nlp, texts, test, args)
    _common.emit(result, indent=None)
    return result


def _accuracy(predicted, examples):
    import numpy

    return float(numpy.mean([
        max(p, key=p.get) == max(eg.reference.cats, key=eg.reference.cats.get)
        for p, eg in zip(predicted, examples)
    ]))


def _int8_inference(nlp, texts, test, args):
    from spacy_rnn.compression.quantize import quantize_pipeline
    from spacy_rnn.compression.report import dir_size, words_per_second

    with tempfile.TemporaryDirectory() as tmp:
        nlp.to_disk(Path(tmp) / "float")
        nlp_q, _ = quantize_pipeline(Path(tmp) / "float", Path(tmp) / "int8")
        sizes = {"float_bytes": dir_size(Path(tmp) / "float"),
                 "int8_bytes": dir_size(Path(tmp) / "int8")}
    # Float and int8 passes alternate, so load from other processes hits
    # both alike.
    w_float, w_int8 = words_per_second(
        [nlp, nlp_q], texts, batch_size=args.infer_batch_size, min_seconds=2.0)
    acc = _accuracy([d.cats for d in nlp_q.pipe(texts, batch_size=args.infer_batch_size)], test)
    return {
        "float_infer_words_per_s": w_float,
        "int8_infer_words_per_s": w_int8,
        "infer_ratio": w_int8 / w_float,
        "accuracy": acc,
        **sizes,
    }


if __name__ == "__main__":
    main()

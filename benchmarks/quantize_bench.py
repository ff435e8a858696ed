"""float32 against dynamic int8 inference, and magnitude pruning, for
``rnn_textcat`` on the Amazon reviews.

    python benchmarks/quantize_bench.py --seconds 120 --threads 2
    python benchmarks/quantize_bench.py --pipeline training/amazon/model-best

Trains the default ``rnn_textcat`` (BiLSTM 128) for ``--seconds`` unless
``--pipeline`` names a trained one, then runs what ``python -m spacy_rnn
quantize`` and ``prune`` run, with the test split as ``--eval-data``. Also
times the encoder alone (the ``RNNStack``, float against int8) on batches of
review-length docs, since the whole-pipeline figure includes the float
embedding and tokenizer. Prints one JSON object.
"""
import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import textcat_bench  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_REVIEWS)
    p.add_argument("--corpus-dir", type=Path, default=None)
    p.add_argument("--pipeline", type=Path, default=None,
                   help="trained pipeline to compress (default: train one)")
    p.add_argument("--seconds", type=float, default=60.0, help="training budget")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--max-eval", type=int, default=0)
    p.add_argument("--sparsities", default="0.3,0.5,0.7")
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="time each speed measurement for at least this long")
    p.add_argument("--encoder-batches", type=int, default=10)
    _common.add_common_args(p, gpu=False)
    return p.parse_args(argv)


def train_quick(corpus: Path, out: Path, args) -> None:
    import spacy
    from spacy.training import Corpus
    from spacy.util import minibatch
    from thinc.api import fix_random_seed

    fix_random_seed(args.seed)
    rng = random.Random(args.seed)
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("rnn_textcat", name="textcat")
    for label in textcat_bench.LABELS:
        textcat.add_label(label)
    train = list(Corpus(str(corpus / "train.spacy"), limit=args.max_train)(nlp))
    optimizer = nlp.initialize(lambda: train)
    spent = 0.0
    while spent < args.seconds:
        rng.shuffle(train)
        for batch in minibatch(train, size=32):
            start = time.perf_counter()
            nlp.update(batch, drop=0.2, sgd=optimizer)
            spent += time.perf_counter() - start
            if spent >= args.seconds:
                break
    nlp.to_disk(out)


def encoder_only(nlp_float, nlp_int8, lengths_pool, args):
    """Float vs int8 RNNStack alone on review-length batches of 32."""
    import torch

    from spacy_rnn.compression.quantize import INT8_ENCODER  # noqa: F401

    def stack_of(nlp):
        for _, pipe in nlp.components:
            model = getattr(pipe, "model", None)
            if model is None:
                continue
            for node in model.walk():
                if node.name.startswith("rnn_encoder") and node.shims:
                    return node.shims[0]._model
        raise ValueError("no rnn encoder")

    f, q = stack_of(nlp_float), stack_of(nlp_int8)
    f.eval()
    rng = random.Random(args.seed)
    width = f.input_size
    times = {"float32": 0.0, "int8": 0.0}
    diff = 0.0
    with torch.inference_mode():
        for i in range(args.encoder_batches + 1):
            lengths = [rng.choice(lengths_pool) for _ in range(32)]
            X = torch.randn(sum(lengths), width)
            pair = [("float32", f), ("int8", q)]
            rng.shuffle(pair)
            outs = {}
            for name, module in pair:
                start = time.perf_counter()
                outs[name] = module(X, lengths)
                if i:  # first batch is a warm-up
                    times[name] += time.perf_counter() - start
            diff = max(diff, float((outs["float32"] - outs["int8"]).abs().max()))
    return {
        "float32_seconds_per_batch": times["float32"] / args.encoder_batches,
        "int8_seconds_per_batch": times["int8"] / args.encoder_batches,
        "int8_vs_float32_speed_ratio": times["float32"] / times["int8"],
        "max_abs_output_diff": diff,
    }


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import spacy
    import torch

    import spacy_rnn  # noqa: F401
    from spacy_rnn.compression.prune import prune_and_report
    from spacy_rnn.compression.quantize import quantize_and_report

    corpus = textcat_bench.ensure_corpus(args)
    eval_data = corpus / "test.spacy"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipeline = args.pipeline
        if pipeline is None:
            pipeline = tmp / "float"
            train_quick(corpus, pipeline, args)
        q = quantize_and_report(pipeline, tmp / "int8", eval_data, args.max_eval, args.min_seconds)
        pruned = {}
        for s in [float(x) for x in args.sparsities.split(",") if x.strip()]:
            r = prune_and_report(pipeline, tmp / f"pruned-{s}", s, "tensor", True,
                                 eval_data, args.max_eval, args.min_seconds)
            r.pop("tensors")
            pruned[str(s)] = r
        nlp_f, nlp_q = spacy.load(pipeline), spacy.load(tmp / "int8")
        from spacy.training import Corpus

        pool = [len(eg.reference) for eg in Corpus(str(eval_data), limit=args.max_eval)(nlp_f)]
        enc = encoder_only(nlp_f, nlp_q, [n for n in pool if n > 0], args)
    result = {
        "benchmark": "quantize_bench",
        **_common.machine_info(threads, torch.device("cpu")),
        "pipeline": str(args.pipeline) if args.pipeline else f"rnn_textcat trained {args.seconds:g}s",
        "quantize": q,
        "int8_vs_float32_infer_ratio": q["speed_words_per_s"]["ratio"],
        "encoder_only": enc,
        "prune": pruned,
    }
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()

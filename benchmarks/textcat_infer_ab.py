"""Inference of ``rnn_textcat`` against the same model in plain PyTorch,
alternating passes in one process.

    python benchmarks/textcat_infer_ab.py --rounds 8 --threads 2
    python benchmarks/textcat_infer_ab.py --model rnn_bigru_attention

``textcat_bench.py`` runs each model in its own process, one after the
other, and on a VM whose speed drifts that leaves inference too noisy to
tell two close models apart (the plain model moved from 57.6k to 84.5k
words/s between its runs there). Here both run in one process on the same
texts, pass for pass in turn, so drift hits both alike; the JSON gives every
round and the medians. Each round times, for each side, the whole
``nlp.pipe`` (tokenising included) and the model alone on pre-made docs
(``TextCategorizer.predict`` against ``PlainTrainer.predict``, each with its
features). Weights are freshly initialised: inference does the same work
whatever they are.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from textcat_bench import LABELS, PLAIN_COUNTERPART, PLAIN_MODELS, model_setup  # noqa: E402

INFER_MODELS = ("rnn_bilstm", "rnn_gru", "rnn_bigru_attention")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_REVIEWS, help="reviews.jsonl")
    p.add_argument("--max-docs", type=int, default=800, help="reviews to classify per pass")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", choices=INFER_MODELS, default="rnn_bilstm",
                   help="the spacy-rnn model (textcat_bench.py's names); the plain side is its "
                        "PLAIN_COUNTERPART")
    p.add_argument("--padded", action="store_true",
                   help="plain model over the zero-padded batch instead of packed sequences")
    _common.add_common_args(p, gpu=False)
    _common.add_gemm_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, args.keep_freed_memory)
    import spacy
    import torch
    from thinc.api import fix_random_seed

    import spacy_rnn  # noqa: F401
    from _plain_textcat import PlainTextcat, PlainTrainer, plain_pipe

    fix_random_seed(args.seed)
    texts = [r["full_text"] for r in _common.read_review_texts(args.data, args.max_docs)]
    nlp = spacy.blank("en")
    factory, config = model_setup(args.model)
    textcat = nlp.add_pipe(factory, name="textcat", config=config)
    for label in LABELS:
        textcat.add_label(label)
    nlp.initialize()
    gemm_layers = _common.apply_gemm(nlp, args)
    plain_name = PLAIN_COUNTERPART[args.model]
    plain = PlainTrainer(PlainTextcat(len(LABELS), **{**PLAIN_MODELS[plain_name], "packed": not args.padded}))

    def batched(fn, docs):
        for start in range(0, len(docs), args.batch_size):
            fn(docs[start:start + args.batch_size])

    docs = [nlp.make_doc(t) for t in texts]
    words = sum(len(d) for d in docs)
    runs = {
        "rnn_textcat_pipe": lambda: list(nlp.pipe(texts, batch_size=args.batch_size)),
        "plain_pipe": lambda: plain_pipe(nlp, plain, texts, LABELS, args.batch_size),
        "rnn_textcat_model": lambda: batched(textcat.predict, docs),
        "plain_model": lambda: batched(plain.predict, docs),
    }
    for run in runs.values():  # warm-up pass, untimed
        run()
    per_round = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            per_round[name].append(words / (time.perf_counter() - start))
    medians = {name: statistics.median(v) for name, v in per_round.items()}
    result = {
        "benchmark": "textcat_infer_ab",
        **_common.machine_info(threads, torch.device("cpu")),
        "data": str(args.data),
        "docs": len(docs),
        "words": words,
        "batch_size": args.batch_size,
        "model": args.model,
        "plain_model": plain_name,
        "plain_packed": not args.padded,
        "gemm": args.gemm,
        "gemm_layers_switched": gemm_layers,
        "words_per_s_per_round": per_round,
        "median_words_per_s": medians,
        "pipe_ratio_median": medians["rnn_textcat_pipe"] / medians["plain_pipe"],
        "model_ratio_median": medians["rnn_textcat_model"] / medians["plain_model"],
        "pipe_ratio_per_round": [a / b for a, b in zip(per_round["rnn_textcat_pipe"], per_round["plain_pipe"])],
    }
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()

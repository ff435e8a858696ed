"""Helpers shared by the tests."""
import json
from pathlib import Path
from typing import Iterable, List

import spacy
from spacy.training import Example

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "assets" / "fixtures"

SMALL_TEXTCAT_MODEL = {
    "@architectures": "spacy-rnn.TextCatRNN.v1",
    "exclusive_classes": True,
    "pooling": "mean",
    "tok2vec": {
        "@architectures": "spacy.Tok2Vec.v2",
        "embed": {
            "@architectures": "spacy.MultiHashEmbed.v2",
            "width": 32,
            "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
            "rows": [500, 100, 100, 50],
            "include_static_vectors": False,
        },
        "encode": {
            "@architectures": "spacy-rnn.RNNEncoder.v1",
            "width": 32,
            "depth": 1,
            "cell": "lstm",
            "bidirectional": True,
        },
    },
}


def small_textcat_config(exclusive=True, pooling="mean", cell="lstm", bidirectional=True):
    model = json.loads(json.dumps(SMALL_TEXTCAT_MODEL))
    model["exclusive_classes"] = exclusive
    model["pooling"] = pooling
    model["tok2vec"]["encode"]["cell"] = cell
    model["tok2vec"]["encode"]["bidirectional"] = bidirectional
    return {"model": model}


def fixture_examples(nlp) -> List[Example]:
    examples = []
    with (FIXTURES / "reviews_tiny.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            doc = nlp.make_doc(row["text"])
            cats = {"positive": float(row["label"] == "positive"), "negative": float(row["label"] == "negative")}
            examples.append(Example.from_dict(doc, {"cats": cats}))
    return examples


def blank_with_textcat(factory="rnn_textcat", **kwargs):
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, config=small_textcat_config(**kwargs))
    return nlp


def update_in_batches(nlp, examples: Iterable[Example], batch_size: int, steps: int, sgd) -> int:
    """Update on consecutive batches of ``examples`` (a language model's
    parallel streams), ``steps`` times at most; the number of updates."""
    batch, done = [], 0
    for eg in examples:
        batch.append(eg)
        if len(batch) == batch_size:
            nlp.update(batch, sgd=sgd)
            batch, done = [], done + 1
            if done == steps:
                break
    return done

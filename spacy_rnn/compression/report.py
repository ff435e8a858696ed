"""Before/after measurements shared by the compression commands: size on
disk, inference speed and textcat accuracy."""
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional

import numpy
from spacy.language import Language
from spacy.training import Corpus, Example


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def compressed_size(path: Path) -> int:
    """Size after zlib compression of every file: what sparsity saves in a
    zipped package, since pruned weights stay dense on disk."""
    return sum(
        len(zlib.compress(f.read_bytes(), 6)) for f in Path(path).rglob("*") if f.is_file()
    )


def load_examples(nlp: Language, path: Optional[Path], limit: int = 0) -> List[Example]:
    if path is None:
        return []
    if not Path(path).exists():
        raise FileNotFoundError(f"--eval-data {path} does not exist")
    return list(Corpus(str(path), limit=limit)(nlp))


def textcat_predictions(nlp: Language, texts: List[str], batch_size: int = 256):
    return [doc.cats for doc in nlp.pipe(texts, batch_size=batch_size)]


def words_per_second(
    pipelines: List[Language], texts: List[str], batch_size: int = 256, min_seconds: float = 1.0
) -> List[Optional[float]]:
    """Whole-pipeline inference speed of each pipeline, best of repeated
    passes. Passes alternate between the pipelines so that a busy machine
    slows them alike instead of penalising whichever runs last."""
    if not texts or not pipelines:
        return [None for _ in pipelines]
    n_words = sum(len(pipelines[0].make_doc(t)) for t in texts)
    for nlp in pipelines:
        list(nlp.pipe(texts[:batch_size], batch_size=batch_size))  # warm-up
    best = [float("inf")] * len(pipelines)
    spent = 0.0
    while spent < min_seconds * len(pipelines) or any(b == float("inf") for b in best):
        for i, nlp in enumerate(pipelines):
            start = time.perf_counter()
            for _ in nlp.pipe(texts, batch_size=batch_size):
                pass
            elapsed = time.perf_counter() - start
            best[i] = min(best[i], elapsed)
            spent += elapsed
    return [n_words / b for b in best]


def accuracy(examples: List[Example], predicted: List[Dict[str, float]]) -> Optional[float]:
    """Share of docs whose top predicted label is the top gold label."""
    scored = [
        (max(p, key=p.get) == max(eg.reference.cats, key=eg.reference.cats.get))
        for eg, p in zip(examples, predicted)
        if eg.reference.cats and p
    ]
    return float(numpy.mean(scored)) if scored else None


def compare_pipelines(
    before: Language,
    after: Language,
    examples: List[Example],
    batch_size: int = 256,
    min_seconds: float = 1.0,
) -> Dict:
    """Speed, accuracy and prediction drift of two pipelines on the same docs."""
    texts = [eg.reference.text for eg in examples]
    pred_before = textcat_predictions(before, texts, batch_size)
    pred_after = textcat_predictions(after, texts, batch_size)
    drift = [
        abs(p[label] - q.get(label, 0.0))
        for p, q in zip(pred_before, pred_after)
        for label in p
    ]
    speed_before, speed_after = words_per_second([before, after], texts, batch_size, min_seconds)
    acc_before = accuracy(examples, pred_before)
    acc_after = accuracy(examples, pred_after)
    return {
        "eval_docs": len(examples),
        "speed_words_per_s": {
            "before": speed_before,
            "after": speed_after,
            "ratio": speed_after / speed_before if speed_before and speed_after else None,
        },
        "accuracy": {
            "before": acc_before,
            "after": acc_after,
            "change": acc_after - acc_before
            if acc_before is not None and acc_after is not None
            else None,
        },
        "max_abs_prob_diff": float(max(drift)) if drift else None,
        "mean_abs_prob_diff": float(numpy.mean(drift)) if drift else None,
    }


def size_report(before_dir: Path, after_dir: Path) -> Dict:
    before, after = dir_size(before_dir), dir_size(after_dir)
    zbefore, zafter = compressed_size(before_dir), compressed_size(after_dir)
    return {
        "size_bytes": {"before": before, "after": after, "ratio": after / before},
        "zlib_size_bytes": {"before": zbefore, "after": zafter, "ratio": zafter / zbefore},
    }

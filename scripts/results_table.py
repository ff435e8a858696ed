"""Collect test metrics into one Markdown table.

    python scripts/results_table.py METRICS.json [...] --output results.md

Each METRICS.json is either the output of ``spacy evaluate --output`` (a text
classifier: ``cats_*`` scores) or of ``python -m spacy_rnn evaluate-lm
--output`` (a language model: ``tokens``, ``nll``, ``perplexity``). One row
per file, named after the file (the workflows use one run name for
``metrics/<run>.json``, ``training/<run>/`` and ``plots/<run>.png``); a glob such as ``metrics/*.json`` is
expanded here, since weasel runs scripts without a shell. The run's training
log, ``training/<run>/train_log.jsonl``, adds its step count and best dev
score where it exists, and for a language model the dev perplexity at that
best step.
"""
import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

COLUMNS = (
    "run",
    "task",
    "test accuracy",
    "test macro-F",
    "test macro-AUC",
    "test perplexity",
    "test NLL/token",
    "test tokens",
    "train steps",
    "best dev score",
    "best dev perplexity",
)


def expand(patterns: Sequence[str]) -> List[Path]:
    """Expand globs and keep literal paths, sorted, without duplicates."""
    paths: List[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths.extend(Path(p) for p in sorted(glob.glob(pattern)))
        else:
            paths.append(Path(pattern))
    return list(dict.fromkeys(paths))


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _train_log_summary(run: str, training_dir: Path) -> Dict[str, str]:
    log = training_dir / run / "train_log.jsonl"
    if not log.exists():
        return {}
    records = [json.loads(line) for line in log.read_text(encoding="utf8").splitlines() if line.strip()]
    if not records:
        return {}
    best = max(records, key=lambda r: r.get("score", float("-inf")))
    summary = {"train steps": str(records[-1]["step"]), "best dev score": _fmt(best.get("score"))}
    # An LM's dev score is 1 / perplexity; its perplexity is clearer.
    # spacy.ConsoleLogger.v2 logs every score times 100.
    ppl = best.get("scores", {}).get("lm_ppl")
    if ppl is not None:
        summary["best dev perplexity"] = _fmt(ppl / 100, 2)
    return summary


def metrics_row(path: Path, training_dir: Path) -> Dict[str, str]:
    """Turn one metrics file into a table row.

    path (Path): A JSON file from spacy evaluate or evaluate-lm.
    training_dir (Path): Where to look for training/<run>/train_log.jsonl.
    RETURNS (Dict[str, str]): Cell text per column.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: metrics file not found (run the evaluate command first)")
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON metrics file ({err})") from None
    run = path.stem
    row = {"run": run}
    if "perplexity" in data:
        row.update(
            {
                "task": "language model",
                "test perplexity": _fmt(data["perplexity"], 2),
                "test NLL/token": _fmt(data.get("nll")),
                "test tokens": str(data.get("tokens", "")),
            }
        )
    elif "cats_score" in data:
        # For mutually exclusive classes spaCy's scorer takes the argmax, so
        # micro P = R = F = accuracy.
        row.update(
            {
                "task": "text classification",
                "test accuracy": _fmt(data.get("cats_micro_f")),
                "test macro-F": _fmt(data.get("cats_macro_f")),
                "test macro-AUC": _fmt(data.get("cats_macro_auc")),
            }
        )
    else:
        raise ValueError(
            f"{path}: neither a textcat evaluation (cats_score) nor an LM evaluation (perplexity)"
        )
    row.update(_train_log_summary(run, training_dir))
    return row


def to_markdown(rows: Sequence[Dict[str, str]]) -> str:
    """Render rows as a Markdown table, dropping columns that are all empty."""
    columns = [c for c in COLUMNS if any(row.get(c) for row in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Collect metrics JSON files into a Markdown table.")
    parser.add_argument("metrics", nargs="+", help="Metrics JSON files or globs")
    parser.add_argument("--output", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--training-dir", type=Path, default=Path("training"), help="Where the runs' training logs are")
    args = parser.parse_args(argv)
    paths = expand(args.metrics)
    if not paths:
        print(f"✘ No metrics files match {' '.join(args.metrics)}: run an evaluate command first", file=sys.stderr)
        return 1
    try:
        rows = [metrics_row(p, args.training_dir) for p in paths]
    except (FileNotFoundError, ValueError) as err:
        print(f"✘ {err}", file=sys.stderr)
        return 1
    table = to_markdown(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf8")
    print(table)
    print(f"✔ Wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plot the learning curves of one `spacy train` run.

    python scripts/plot_curves.py LOG.jsonl OUTPUT.png [--title TITLE]

LOG.jsonl is what ``spacy.ConsoleLogger.v2`` writes to ``output_file``: one
JSON object per evaluation with ``step``, ``losses`` (training loss summed
since the previous evaluation, per component), ``scores`` (dev scores) and
``score`` (the weighted score that picks model-best). The PNG has one panel
for the training loss and one per dev score (loss and perplexity, or macro-F
and friends), all against the training step, with the best step marked.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

# No display on CI machines or servers; must be set before pyplot loads.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# spacy.ConsoleLogger.v2 multiplies every score but speed by 100 before it
# writes it; undo that so perplexities and losses come out as computed.
UNSCALED = ("speed",)
# Scores worth a log axis because they span orders of magnitude early on.
LOG_SCALE = ("ppl", "perplexity")
# What the less obvious score names mean (spaCy's *_score_desc).
SCORE_NAMES = {"cats_score": "cats_score (macro-F)", "lm_ppl": "lm_ppl (perplexity)"}


def read_log(path: Path) -> List[Dict]:
    """Read a ConsoleLogger JSONL file, naming the line of any bad record.

    path (Path): The log file.
    RETURNS (List[Dict]): One dict per evaluation step, in file order.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: training log not found. Train with "
            f"--training.logger.@loggers spacy.ConsoleLogger.v2 "
            f"--training.logger.output_file {path}"
        )
    records = []
    with path.open(encoding="utf8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not a JSON record ({err})") from None
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}, line {n}: no 'step' field; is this a spaCy training log?")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no evaluation steps logged (did training stop before the first one?)")
    return records


def _score_value(name: str, value: float) -> float:
    return value if name in UNSCALED else value / 100.0


def plot_curves(records: Sequence[Dict], output: Path, title: Optional[str] = None) -> Path:
    """Write the learning-curve PNG for a list of log records.

    records (Sequence[Dict]): As returned by read_log.
    output (Path): Where to write the PNG; parent folders are created.
    title (Optional[str]): Figure title, e.g. the run name.
    RETURNS (Path): The output path.
    """
    steps = [r["step"] for r in records]
    loss_names = sorted({k for r in records for k in r.get("losses", {})})
    score_names = [
        k for k in dict.fromkeys(k for r in records for k in r.get("scores", {})) if k not in UNSCALED
    ]
    n_panels = 1 + len(score_names)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.4), squeeze=False)
    axes = axes[0]
    best = max(records, key=lambda r: r.get("score", float("-inf")))

    ax = axes[0]
    for name in loss_names:
        # Step 0 is logged before any update, with a loss of 0: leave it out.
        points = [(r["step"], r["losses"][name]) for r in records if name in r.get("losses", {}) and r["step"] > 0]
        if points:
            ax.plot(*zip(*points), marker=".", label=name)
    ax.set_title("training loss (since previous eval)")
    ax.set_xlabel("step")
    if loss_names:
        ax.legend(fontsize="small")

    for ax, name in zip(axes[1:], score_names):
        values = [_score_value(name, r["scores"].get(name, float("nan"))) for r in records]
        ax.plot(steps, values, marker=".", color="tab:orange")
        if any(key in name for key in LOG_SCALE) and all(v > 0 for v in values if v == v):
            ax.set_yscale("log")
        best_value = _score_value(name, best["scores"].get(name, float("nan")))
        ax.axvline(best["step"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"dev {SCORE_NAMES.get(name, name)}\n(best step {best['step']}: {best_value:.4g})", fontsize="medium")
        ax.set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a spaCy training log (JSONL) as learning curves.")
    parser.add_argument("log", type=Path, help="JSONL written by spacy.ConsoleLogger.v2 output_file")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--title", default=None, help="Figure title")
    args = parser.parse_args(argv)
    try:
        records = read_log(args.log)
    except (FileNotFoundError, ValueError) as err:
        print(f"✘ {err}", file=sys.stderr)
        return 1
    plot_curves(records, args.output, title=args.title)
    print(f"✔ Saved learning curves ({len(records)} evaluations) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ablation runs: one ``spacy train`` per variant, same data and budget, and
a markdown table of what each technique changed.

A variants file maps a name to the config values that turn one technique on
or off, relative to the base config, e.g.::

    {"baseline": {},
     "no orthogonal init": {"components.textcat.model.tok2vec.encode.init": "default"},
     "weight drop 0.3": {"components.textcat.model.tok2vec.encode.weight_drop": 0.3}}
"""
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import srsly
from spacy.util import load_config

from .search import thread_env, train_trial


def load_variants(path: Path) -> Dict[str, Dict[str, Any]]:
    """Read and check a variants file (JSON or YAML).

    path (Path): The variants file.
    RETURNS (Dict[str, Dict[str, Any]]): Variant name to config values.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Variants file not found: {path}")
    variants = srsly.read_yaml(path) if path.suffix in (".yml", ".yaml") else srsly.read_json(path)
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path}: variants must be a non-empty mapping of name to config values")
    for name, values in variants.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: variant {name!r} must map config paths to values")
    return variants


def run_ablation(
    config_path: Path,
    variants_path: Path,
    output_dir: Path,
    *,
    overrides: Sequence[str] = tuple(),
    gpu_id: int = -1,
    baseline: Optional[str] = "baseline",
    seeds: Sequence[int] = tuple(),
    table: Optional[Path] = None,
    jobs: int = 1,
) -> List[Dict[str, Any]]:
    """Train every variant (once per seed) and write ``results.md`` and
    ``results.jsonl`` (one line per run, rewritten on every call).

    config_path (Path): The base training config.
    variants_path (Path): The variants file (see ``load_variants``).
    output_dir (Path): Where runs and results go.
    overrides (Sequence[str]): Fixed ``--key value`` overrides for every run
        (data paths, step budget).
    gpu_id (int): GPU to train on, -1 for CPU.
    baseline (Optional[str]): Variant the others are compared with.
    seeds (Sequence[int]): Run each variant once per seed
        (``--training.seed``) and report mean and standard deviation; empty:
        one run with the config's seed.
    table (Optional[Path]): Also write the markdown table here.
    jobs (int): Runs to train at once, each in its own process with
        ``cpu_count // jobs`` threads (see ``search.thread_env``). The log
        gets each row as its run ends; at the end it is rewritten in
        variant order.
    RETURNS (List[Dict[str, Any]]): One row per run, in variant order.
    """
    variants = load_variants(variants_path)
    env = thread_env(jobs)
    config = load_config(config_path)
    weights = dict(config["training"]["score_weights"])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "results.jsonl"
    log.write_text("", encoding="utf8")
    seed_list: List[Optional[int]] = [int(s) for s in seeds] or [None]
    runs = [(i, name, values, seed) for i, (name, values) in enumerate(variants.items())
            for seed in seed_list]
    lock = threading.Lock()

    def train(run) -> Dict[str, Any]:
        i, name, values, seed = run
        run_dir = output_dir / (f"variant-{i:02d}" if seed is None else f"variant-{i:02d}-seed{seed}")
        run_values = dict(values)
        if seed is not None:
            run_values["training.seed"] = seed
        try:
            score, seconds = train_trial(config_path, run_dir, run_values, weights,
                                         overrides=overrides, gpu_id=gpu_id, env=env)
            status = "ok"
        except RuntimeError as err:
            score, seconds, status = None, None, f"failed: {str(err)[-300:]}"
        row = {"variant": name, "values": values, "seed": seed, "score": score,
               "seconds": seconds, "status": status, "dir": run_dir.name}
        with lock:
            with log.open("a", encoding="utf8") as f:
                f.write(json.dumps(row) + "\n")
        return row

    # Threads only wait on their run's subprocess; map keeps run order.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(train, runs))
    log.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    score_names = [k for k, w in weights.items() if w]
    text = _table(rows, list(variants), baseline, score_names, len(seed_list))
    (output_dir / "results.md").write_text(text, encoding="utf8")
    if table is not None:
        Path(table).parent.mkdir(parents=True, exist_ok=True)
        Path(table).write_text(text, encoding="utf8")
    return rows


def summarise(rows: List[Dict[str, Any]], variant: str) -> Dict[str, Any]:
    """Mean, sample standard deviation (n - 1) and count of a variant's
    successful runs, its mean training time and its failures."""
    mine = [r for r in rows if r["variant"] == variant]
    scores = [r["score"] for r in mine if r["score"] is not None]
    seconds = [r["seconds"] for r in mine if r["seconds"] is not None]
    return {
        "n": len(scores),
        "mean": statistics.fmean(scores) if scores else None,
        "std": statistics.stdev(scores) if len(scores) > 1 else None,
        "seconds": statistics.fmean(seconds) if seconds else None,
        "failed": [r["status"] for r in mine if r["score"] is None],
    }


def _table(rows, variants: List[str], baseline: Optional[str], score_names, n_seeds: int) -> str:
    multi = n_seeds > 1
    score_head = f"dev score ({', '.join(n for n in score_names)})"
    if list(score_names) == ["lm_score"]:
        # lm_score is 1 / perplexity: tables read better in perplexity,
        # averaged over seeds as perplexities.
        rows = [dict(r, score=1.0 / r["score"] if r["score"] else None) for r in rows]
        score_head = "dev perplexity (1 / lm_score)"
    digits = 1 if score_head.startswith("dev perplexity") else 4
    if multi:
        score_head += f", mean ± std over {n_seeds} seeds"
    lines = [
        f"| variant | settings | {score_head} | change | train s |",
        "|---|---|---|---|---|",
    ]
    base = summarise(rows, baseline)["mean"] if baseline in variants else None
    for name in variants:
        values = next(r["values"] for r in rows if r["variant"] == name)
        settings = ", ".join(
            f"`{k.split('.')[-1]}={_fmt(v)}`" for k, v in values.items()
        ) or "(base config)"
        summary = summarise(rows, name)
        if summary["mean"] is None:
            lines.append(f"| {name} | {settings} | {_one_line(summary['failed'][0])} | | |")
            continue
        cell = f"{summary['mean']:.{digits}f}"
        if multi:
            std = summary["std"]
            cell += f" ± {std:.{digits}f}" if std is not None else ""
            if summary["n"] < n_seeds:
                cell += f" ({summary['n']} of {n_seeds} runs; {len(summary['failed'])} failed)"
        change = f"{summary['mean'] - base:+.{digits}f}" if base is not None and name != baseline else ""
        lines.append(f"| {name} | {settings} | {cell} | {change} | {summary['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _one_line(status: str) -> str:
    """A failure for a table cell: the traceback's last line (the error
    itself), without the newlines and pipes that would break the table."""
    lines = [line.strip() for line in status.splitlines() if line.strip()]
    last = lines[-1] if lines else status
    if not last.startswith("failed"):
        last = f"failed: {last}"
    return last.replace("|", "\\|")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return value.get("@callbacks") or value.get("@architectures") or json.dumps(value)
    return json.dumps(value) if not isinstance(value, str) else value

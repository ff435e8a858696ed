"""Ablation runs: one ``spacy train`` per variant, same data and budget, and
a markdown table of what each technique changed.

A variants file maps a name to the config values that turn one technique on
or off, relative to the base config, e.g.::

    {"baseline": {},
     "no orthogonal init": {"components.textcat.model.tok2vec.encode.init": "default"},
     "weight drop 0.3": {"components.textcat.model.tok2vec.encode.weight_drop": 0.3}}
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import srsly
from spacy.util import load_config

from .search import train_trial


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
) -> List[Dict[str, Any]]:
    """Train every variant and write ``results.md`` and ``results.jsonl``.

    config_path (Path): The base training config.
    variants_path (Path): The variants file (see ``load_variants``).
    output_dir (Path): Where runs and results go.
    overrides (Sequence[str]): Fixed ``--key value`` overrides for every run
        (data paths, step budget).
    gpu_id (int): GPU to train on, -1 for CPU.
    baseline (Optional[str]): Variant the others are compared with.
    RETURNS (List[Dict[str, Any]]): One row per variant.
    """
    variants = load_variants(variants_path)
    config = load_config(config_path)
    weights = dict(config["training"]["score_weights"])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, values) in enumerate(variants.items()):
        run_dir = output_dir / f"variant-{i:02d}"
        try:
            score, seconds = train_trial(config_path, run_dir, values, weights,
                                         overrides=overrides, gpu_id=gpu_id)
            status = "ok"
        except RuntimeError as err:
            score, seconds, status = None, None, f"failed: {str(err)[-300:]}"
        rows.append({"variant": name, "values": values, "score": score,
                     "seconds": seconds, "status": status, "dir": run_dir.name})
        with (output_dir / "results.jsonl").open("a", encoding="utf8") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    _write_table(output_dir / "results.md", rows, baseline, [k for k, w in weights.items() if w])
    return rows


def _write_table(path: Path, rows, baseline: Optional[str], score_names) -> None:
    base = next((r["score"] for r in rows if r["variant"] == baseline), None)
    lines = [
        f"| variant | settings | dev score ({', '.join(n for n in score_names)}) | change | train s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(
            f"`{k.split('.')[-1]}={_fmt(v)}`" for k, v in r["values"].items()
        ) or "(base config)"
        if r["score"] is None:
            lines.append(f"| {r['variant']} | {settings} | {r['status']} | | |")
            continue
        change = f"{r['score'] - base:+.4f}" if base is not None and r["variant"] != baseline else ""
        lines.append(f"| {r['variant']} | {settings} | {r['score']:.4f} | {change} | {r['seconds']:.0f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return value.get("@callbacks") or value.get("@architectures") or json.dumps(value)
    return json.dumps(value) if not isinstance(value, str) else value

"""Hyper-parameter search over ``spacy train`` config values, with Optuna.

Each trial is one real ``spacy train`` run (in a subprocess, so trials cannot
leak state into each other) with the sampled values as config overrides; its
score is the weighted dev score spaCy itself optimises
(``[training.score_weights]``), read back from the trained pipeline's meta.
The study writes a markdown results table, a JSONL log of every trial, and
the best config with its values filled in.

Trials can run side by side (``jobs``): each is its own process, so the
only thing to share out is the CPU, and each gets ``cpu_count // jobs``
threads unless ``OMP_NUM_THREADS`` is already set.
"""
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import srsly
from spacy.util import load_config

SPACE_TYPES = ("float", "int", "categorical")


def load_space(path: Path) -> Dict[str, Dict[str, Any]]:
    """Read and check a search space file (JSON or YAML).

    Each key is a dotted config path; each value says how to sample it:
    ``{"type": "float", "low": 1e-4, "high": 1e-2, "log": true}``,
    ``{"type": "int", "low": 1, "high": 3}`` or
    ``{"type": "categorical", "choices": ["lstm", "gru"]}``.

    path (Path): The space file.
    RETURNS (Dict[str, Dict[str, Any]]): The checked space.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Search space file not found: {path}")
    space = srsly.read_yaml(path) if path.suffix in (".yml", ".yaml") else srsly.read_json(path)
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{path}: the search space must be a non-empty mapping")
    for key, spec in space.items():
        where = f"{path}: {key!r}"
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            raise ValueError(f"{where}: needs a 'type' of {', '.join(SPACE_TYPES)}")
        if spec["type"] == "categorical":
            if not spec.get("choices"):
                raise ValueError(f"{where}: categorical needs non-empty 'choices'")
        elif "low" not in spec or "high" not in spec or spec["low"] > spec["high"]:
            raise ValueError(f"{where}: needs 'low' <= 'high'")
    return space


def weighted_score(performance: Dict[str, Any], weights: Dict[str, Optional[float]]) -> float:
    """The score ``spacy train`` maximises, from a trained pipeline's meta."""
    total = 0.0
    for name, weight in weights.items():
        if weight:
            total += float(performance.get(name) or 0.0) * weight
    return total


def run_search(
    config_path: Path,
    space_path: Path,
    output_dir: Path,
    *,
    n_trials: int = 10,
    sampler: str = "tpe",
    seed: int = 0,
    overrides: Sequence[str] = tuple(),
    gpu_id: int = -1,
    jobs: int = 1,
) -> Dict[str, Any]:
    """Run a study and write ``results.md``, ``trials.jsonl`` and ``best.cfg``.

    config_path (Path): The base training config.
    space_path (Path): The search space file (see ``load_space``).
    output_dir (Path): Where trials and results go.
    n_trials (int): Number of trials.
    sampler (str): "tpe", "random" or "grid" (grid needs only categorical
        dimensions and runs every combination up to ``n_trials``).
    seed (int): Sampler seed.
    overrides (Sequence[str]): Fixed ``--key value`` overrides for every trial.
    gpu_id (int): GPU to train on, -1 for CPU.
    jobs (int): Trials to train at once (see ``thread_env``). With TPE,
        running trials count as "constant liars" (Optuna's
        ``constant_liar``), so parallel trials do not all sample the same
        point; the study then depends on which trial finishes first.
    RETURNS (Dict[str, Any]): The best trial's values and score.
    """
    try:
        import optuna
    except ImportError:  # pragma: no cover
        raise ImportError(
            "Hyper-parameter search needs Optuna: pip install 'spacy-rnn[search]'"
        ) from None
    space = load_space(space_path)
    env = thread_env(jobs)
    config = load_config(config_path)
    weights = dict(config["training"]["score_weights"])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "trials.jsonl"
    log_path.write_text("")

    if sampler == "grid":
        grid = {}
        for key, spec in space.items():
            if spec["type"] != "categorical":
                raise ValueError(f"grid search needs categorical dimensions; {key!r} is {spec['type']}")
            grid[key] = list(spec["choices"])
        chosen = optuna.samplers.GridSampler(grid, seed=seed)
    elif sampler == "random":
        chosen = optuna.samplers.RandomSampler(seed=seed)
    elif sampler == "tpe":
        with warnings.catch_warnings():
            # constant_liar is marked experimental in Optuna 3 and 4.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = optuna.samplers.TPESampler(seed=seed, constant_liar=jobs > 1)
    else:
        raise ValueError(f"Unknown sampler {sampler!r}: choose tpe, random or grid")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=chosen)
    log_lock = threading.Lock()

    def objective(trial) -> float:
        values = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        trial_dir = output_dir / f"trial-{trial.number:03d}"
        try:
            score, _ = train_trial(config_path, trial_dir, values, weights,
                                   overrides=overrides, gpu_id=gpu_id, env=env)
        except RuntimeError as err:
            with log_lock:
                _log(log_path, trial.number, values, None, "failed")
            raise optuna.TrialPruned(str(err))
        with log_lock:
            _log(log_path, trial.number, values, score, "ok")
        return score

    # Optuna runs n_jobs trials at once on threads; each thread only waits
    # on its trial's subprocess.
    study.optimize(objective, n_trials=n_trials, n_jobs=jobs)
    completed = [t for t in study.trials if t.value is not None]
    if not completed:
        raise RuntimeError(f"Every trial failed; see {log_path}")
    best = study.best_trial
    best_values = {key: best.params[key] for key in space}
    best_config = config.copy()
    for key, value in best_values.items():
        _set_dotted(best_config, key, value)
    best_config.to_disk(output_dir / "best.cfg")
    _write_table(output_dir / "results.md", list(space), completed, best.number)
    return {"best_trial": best.number, "best_score": best.value, "best_values": best_values,
            "n_completed": len(completed), "n_trials": len(study.trials)}


def train_trial(
    config_path: Path,
    output: Path,
    values: Dict[str, Any],
    weights: Dict[str, Optional[float]],
    *,
    overrides: Sequence[str] = tuple(),
    gpu_id: int = -1,
    env: Optional[Dict[str, str]] = None,
):
    """Run one ``spacy train`` with extra config values in a subprocess.

    env (Optional[Dict[str, str]]): The subprocess's environment (default:
        this process's).
    The run's console output goes to ``output / "train.log"``.
    RETURNS (Tuple[float, float]): The best weighted dev score and the
        wall-clock seconds the run took.
    """
    import time

    args = [sys.executable, "-m", "spacy", "train", str(config_path),
            "--output", str(output), "--gpu-id", str(gpu_id), *overrides]
    for key, value in values.items():
        args += [f"--{key}", json.dumps(value)]
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    # The run's own console output (the table of dev scores at every
    # evaluation, or the traceback), kept beside its models.
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / "train.log").write_text(result.stdout + result.stderr, encoding="utf8")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-1500:]
        raise RuntimeError(f"training in {output} failed: {tail}")
    meta = srsly.read_json(Path(output) / "model-best" / "meta.json")
    return weighted_score(meta.get("performance", {}), weights), seconds


def thread_env(jobs: int) -> Optional[Dict[str, str]]:
    """The environment for training runs when ``jobs`` run at once.

    Each of torch's and the BLAS libraries' thread pools would otherwise
    take every core, and ``jobs`` such processes oversubscribe the machine.
    An ``OMP_NUM_THREADS`` the user set is kept.

    jobs (int): Runs at once; must be at least 1.
    RETURNS (Optional[Dict[str, str]]): None (inherit) for one job, else a
        copy of ``os.environ`` with the thread counts set.
    """
    if int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return None
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // int(jobs)))
    for name in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, env["OMP_NUM_THREADS"])
    return env


def _suggest(trial, key: str, spec: Dict[str, Any]):
    if spec["type"] == "float":
        return trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
    if spec["type"] == "int":
        return trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
    return trial.suggest_categorical(key, list(spec["choices"]))


def _set_dotted(config, key: str, value) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _log(path: Path, number: int, values, score, status) -> None:
    with path.open("a", encoding="utf8") as f:
        f.write(json.dumps({"trial": number, "values": values, "score": score, "status": status}) + "\n")


def _write_table(path: Path, keys: List[str], trials, best_number: int) -> None:
    lines = ["| trial | " + " | ".join(f"`{k.split('.')[-1]}`" for k in keys) + " | score |",
             "|---|" + "---|" * len(keys) + "---|"]
    for t in sorted(trials, key=lambda t: -t.value):
        mark = " (best)" if t.number == best_number else ""
        cells = [_fmt(t.params[k]) for k in keys]
        lines.append(f"| {t.number}{mark} | " + " | ".join(cells) + f" | {t.value:.4f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

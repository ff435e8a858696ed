from pathlib import Path
from typing import Optional

import typer
from wasabi import msg

from ._app import app


@app.command(
    "search",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def search_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Base spacy train config", exists=True, dir_okay=False),
    space_path: Path = typer.Argument(..., help="Search space (JSON or YAML)"),
    output_dir: Path = typer.Argument(..., help="Folder for trials, results.md and best.cfg"),
    n_trials: int = typer.Option(10, "--n-trials", help="Number of trials"),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe, random or grid"),
    seed: int = typer.Option(0, "--seed", help="Sampler seed"),
    gpu_id: int = typer.Option(-1, "--gpu-id", help="GPU id, -1 for CPU"),
    jobs: int = typer.Option(1, "--jobs", help="Trials to train at once, each with cpu_count // jobs threads (unless OMP_NUM_THREADS is set)"),
):
    """Search config values with Optuna; every trial is a spacy train run.
    Extra --section.key value arguments are passed to every trial."""
    from ..optimization.search import run_search

    try:
        best = run_search(
            config_path, space_path, output_dir, n_trials=n_trials, sampler=sampler,
            seed=seed, overrides=list(ctx.args), gpu_id=gpu_id, jobs=jobs,
        )
    except (ValueError, RuntimeError) as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Best trial {best['best_trial']}: score {best['best_score']:.4f} {best['best_values']}")
    msg.text(f"Results: {output_dir / 'results.md'}; best config: {output_dir / 'best.cfg'}")


@app.command(
    "ablate",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def ablate_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Base spacy train config", exists=True, dir_okay=False),
    variants_path: Path = typer.Argument(..., help="Variants file (JSON or YAML): name -> config values"),
    output_dir: Path = typer.Argument(..., help="Folder for the runs and results.md"),
    gpu_id: int = typer.Option(-1, "--gpu-id", help="GPU id, -1 for CPU"),
    baseline: str = typer.Option("baseline", "--baseline", help="Variant the others are compared with"),
    seeds: str = typer.Option("", "--seeds", help="Comma-separated training seeds, e.g. 0,1,2: each variant runs once per seed and the table shows mean ± std (default: one run, the config's seed)"),
    table: Optional[Path] = typer.Option(None, "--table", help="Also write the markdown table to this file"),
    jobs: int = typer.Option(1, "--jobs", help="Runs to train at once, each with cpu_count // jobs threads (unless OMP_NUM_THREADS is set)"),
):
    """Train each variant with the same data and budget; write a results table.
    Extra --section.key value arguments are passed to every run."""
    from ..optimization.ablation import run_ablation

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        msg.fail(f"--seeds must be comma-separated integers, got {seeds!r}", exits=1)
    try:
        rows = run_ablation(config_path, variants_path, output_dir, overrides=list(ctx.args),
                            gpu_id=gpu_id, baseline=baseline, seeds=seed_list, table=table, jobs=jobs)
    except ValueError as err:
        msg.fail(str(err), exits=1)
    for row in rows:
        seed = "" if row["seed"] is None else f" (seed {row['seed']})"
        msg.text(f"{row['variant']}{seed}: {row['score']}")
    msg.good(f"Results: {table or output_dir / 'results.md'}")

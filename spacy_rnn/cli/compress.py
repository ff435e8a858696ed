import json
from pathlib import Path
from typing import Optional

import typer
from wasabi import msg

from ._app import app


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@app.command("quantize")
def quantize_cli(
    pipeline_dir: Path = typer.Argument(..., help="Trained pipeline folder (nlp.to_disk)", exists=True, file_okay=False),
    output_dir: Path = typer.Argument(..., help="Folder for the int8 pipeline (replaced if it exists)"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=".spacy file or folder with gold cats, to measure speed and accuracy"),
    max_eval: int = typer.Option(0, "--max-eval", help="Use at most this many eval docs (0: all)"),
    threads: int = typer.Option(0, "--threads", help="torch threads for the speed measurement (0: torch's default)"),
    min_seconds: float = typer.Option(1.0, "--min-seconds", help="Time each speed measurement for at least this long"),
):
    """Quantise the recurrent encoders to int8 (dynamic quantisation, CPU
    inference) and print size, speed and accuracy before/after as JSON."""
    from ..compression.quantize import quantize_and_report

    _set_threads(threads)
    try:
        report = quantize_and_report(pipeline_dir, output_dir, eval_data, max_eval, min_seconds)
    except (ValueError, FileNotFoundError) as err:
        msg.fail(str(err), exits=1)
    print(json.dumps(report, indent=1))


@app.command("prune")
def prune_cli(
    pipeline_dir: Path = typer.Argument(..., help="Trained pipeline folder (nlp.to_disk)", exists=True, file_okay=False),
    output_dir: Path = typer.Argument(..., help="Folder for the pruned pipeline (replaced if it exists)"),
    sparsity: float = typer.Option(0.5, "--sparsity", help="Fraction of weights to set to zero"),
    scope: str = typer.Option("tensor", "--scope", help="'tensor': prune each tensor by --sparsity; 'global': one threshold on RMS-relative magnitudes"),
    rnn_only: bool = typer.Option(False, "--rnn-only", help="Prune only the recurrent weights, not Thinc's dense layers"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=".spacy file or folder with gold cats, to measure speed and accuracy"),
    max_eval: int = typer.Option(0, "--max-eval", help="Use at most this many eval docs (0: all)"),
    threads: int = typer.Option(0, "--threads", help="torch threads for the speed measurement (0: torch's default)"),
    min_seconds: float = typer.Option(1.0, "--min-seconds", help="Time each speed measurement for at least this long"),
    finetune_steps: int = typer.Option(0, "--finetune-steps", help="Fine-tune the pruned pipeline for this many updates, pruned weights held at zero (0: no fine-tuning)"),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Training corpus for fine-tuning (read by the pipeline's [corpora.train] reader)"),
    dev_data: Optional[Path] = typer.Option(None, "--dev-data", help="Dev corpus for the scores before/after fine-tuning (read by [corpora.dev]; default: --eval-data)"),
    finetune_lr: float = typer.Option(0.001, "--finetune-lr", help="Adam learning rate for fine-tuning"),
):
    """Magnitude-prune the recurrent and dense weights and print size, speed,
    accuracy and the sparsity reached as JSON. With --finetune-steps, the
    pruned pipeline is trained further with its zeros kept, and the report's
    "finetune" entry holds the dev scores unpruned, pruned and fine-tuned."""
    from ..compression.prune import prune_and_report

    _set_threads(threads)
    try:
        report = prune_and_report(
            pipeline_dir, output_dir, sparsity, scope, not rnn_only, eval_data, max_eval, min_seconds,
            finetune_steps=finetune_steps, train_data=train_data, dev_data=dev_data,
            finetune_lr=finetune_lr,
        )
    except (ValueError, FileNotFoundError) as err:
        msg.fail(str(err), exits=1)
    print(json.dumps(report, indent=1))

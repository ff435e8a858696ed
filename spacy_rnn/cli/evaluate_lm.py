import json
from pathlib import Path
from typing import Optional

import typer
from wasabi import msg

from ._app import app


def evaluate_lm_file(
    pipeline_dir,
    token_file,
    batch_size: int = 10,
    bptt: int = 35,
    component: Optional[str] = None,
    float32: bool = False,
) -> dict:
    """Standard-protocol scores of a token file under a saved ``rnn_lm``.

    pipeline_dir (Union[str, Path]): Pipeline directory.
    token_file (Union[str, Path]): Token file.
    batch_size (int): Parallel stream columns.
    bptt (int): Window length.
    component (Optional[str]): LM component name; None: the only ``rnn_lm``.
    float32 (bool): Evaluate in float32 even if the component is set to
        mixed precision.
    RETURNS (dict): tokens, nll, perplexity and more (see ``evaluate_stream``),
        and ``mixed_precision``: whether autocast was on.
    """
    import spacy

    from ..callbacks import _find_lm
    from ..corpus.token_stream import read_stream

    nlp = spacy.load(pipeline_dir)
    lm = _find_lm(nlp, component, pipeline_dir)
    shim = lm.model.shims[0]
    if float32:
        shim.wants_mixed_precision = False
    tokens = read_stream(token_file)
    result = lm.evaluate_stream(tokens, batch_size=batch_size, bptt=bptt)
    result["file"] = str(token_file)
    result["mixed_precision"] = bool(shim.wants_mixed_precision)
    return result


@app.command("evaluate-lm")
def evaluate_lm_cli(
    pipeline_dir: Path = typer.Argument(..., help="Pipeline directory with an rnn_lm component"),
    token_file: Path = typer.Argument(..., help="Token file, read as one stream with <eos> at every line end"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the JSON here"),
    batch_size: int = typer.Option(10, "--batch-size", help="Parallel stream columns"),
    bptt: int = typer.Option(35, "--bptt", help="Window length (state is carried across windows)"),
    component: Optional[str] = typer.Option(None, "--component", help="LM component name (default: the only rnn_lm)"),
    float32: bool = typer.Option(False, "--float32", help="Evaluate in float32 even if the component uses mixed precision"),
):
    """Standard-protocol perplexity: the file is one stream, dealt into
    --batch-size contiguous columns, state carried across windows, every
    token (each <eos> included) counted once. Prints one JSON object."""
    from ..corpus.token_stream import TokenFileError

    if gpu_id >= 0:
        from thinc.api import require_gpu

        require_gpu(gpu_id)
    try:
        result = evaluate_lm_file(
            pipeline_dir, token_file, batch_size=batch_size, bptt=bptt,
            component=component, float32=float32,
        )
    except (TokenFileError, ValueError, OSError) as err:
        msg.fail(str(err), exits=1)
    text = json.dumps(result)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")
    print(text)

from pathlib import Path

import typer
from wasabi import msg

from ._app import app


@app.command("convert-stream")
def convert_stream_cli(
    input_file: Path = typer.Argument(..., help="PTB / WikiText style token file (UTF-8)"),
    output_dir: Path = typer.Argument(..., help="Output folder of .spacy shards (e.g. corpus/ptb/train.spacy)"),
    lines_per_doc: int = typer.Option(100, "--lines-per-doc", help="Consecutive lines per doc"),
    lang: str = typer.Option("en", "--lang", help="Language of the blank vocabulary"),
):
    """Convert a token file into .spacy docs of consecutive lines, with an
    explicit <eos> token at each line end. Nothing is written on error."""
    from ..corpus.token_stream import TokenFileError, convert_stream

    try:
        n_lines, n_tokens, n_docs = convert_stream(
            input_file, output_dir, lines_per_doc=lines_per_doc, lang=lang
        )
    except (TokenFileError, ValueError) as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Wrote {n_docs} docs ({n_lines} lines, {n_tokens} tokens incl. <eos>) to {output_dir}")

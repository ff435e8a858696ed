from pathlib import Path
from typing import Optional

import typer
from wasabi import msg

from ._app import app


@app.command("convert-amazon")
def convert_amazon_cli(
    source: str = typer.Argument(..., help="Local .jsonl/.parquet file, or a Hugging Face dataset id such as amazon_polarity"),
    output_dir: Path = typer.Argument(..., help="Folder for train.spacy, dev.spacy and test.spacy"),
    max_examples: int = typer.Option(0, "--max-examples", help="Stop after this many reviews (0: all)"),
    lang: str = typer.Option("en", "--lang", help="Language of the blank tokenizer"),
    hub_split: str = typer.Option("train", "--hub-split", help="Split to read from a hub dataset"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision, e.g. refs/convert/parquet"),
):
    """Convert Amazon reviews into labelled .spacy corpora with a fixed split."""
    from ..corpus.amazon import convert_amazon

    try:
        counts = convert_amazon(
            source, output_dir, max_examples=max_examples, lang=lang,
            hub_split=hub_split, revision=revision,
        )
    except (ValueError, FileNotFoundError) as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Wrote {counts} docs to {output_dir}")

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


@app.command("convert-blitzer")
def convert_blitzer_cli(
    tarball: Path = typer.Argument(..., help="Multi-Domain Sentiment tarball (unprocessed.tar.gz, or another with <dir>/<domain>/{positive,negative}.review members)"),
    output_jsonl: Path = typer.Argument(..., help="JSON lines file to write (the input of convert-amazon)"),
    domains: str = typer.Option("", "--domains", help="Comma-separated domain folders to keep, e.g. books,dvd,electronics,kitchen_&_housewares (default: all)"),
    decoding: str = typer.Option("cp1252", "--decoding", help="cp1252: UTF-8, else Windows-1252 per line; utf8-replace: U+FFFD for invalid bytes, as in the project's shared reviews.jsonl"),
    corpus_dir: Optional[Path] = typer.Option(None, "--corpus-dir", help="Also write train/dev/test .spacy corpora here (convert-amazon's fixed split)"),
    lang: str = typer.Option("en", "--lang", help="Language of the blank tokenizer (with --corpus-dir)"),
):
    """Convert the raw pseudo-XML reviews of the Multi-Domain Sentiment
    tarball (positive.review/negative.review of each domain) into reviews
    JSON lines, streaming the tarball. Nothing is written on error."""
    from ..corpus.blitzer import convert_blitzer

    wanted = [d.strip() for d in domains.split(",") if d.strip()] or None
    try:
        counts = convert_blitzer(
            tarball, output_jsonl, domains=wanted, decoding=decoding, corpus_dir=corpus_dir, lang=lang
        )
    except (ValueError, FileNotFoundError) as err:
        msg.fail(str(err), exits=1)
    groups = {k: v for k, v in counts.items() if "/" in k}
    msg.good(f"Wrote {sum(groups.values())} reviews to {output_jsonl}: {groups}")
    if corpus_dir is not None:
        splits = {k: v for k, v in counts.items() if "/" not in k}
        msg.good(f"Wrote {splits} docs to {corpus_dir}")

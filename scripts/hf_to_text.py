"""Export a Hugging Face text dataset split as a PTB/WikiText token file.

    python scripts/hf_to_text.py DATASET SPLIT OUTPUT [--name CONFIG]
        [--revision REV] [--field FIELD] [--layout ptb|wikitext]

The alternative to the download URLs in project.yml, e.g.

    python scripts/hf_to_text.py ptb_text_only train assets/ptb/ptb.train.txt \\
        --revision refs/convert/parquet --field sentence --layout ptb
    python scripts/hf_to_text.py Salesforce/wikitext test assets/wikitext-2/wiki.test.tokens \\
        --name wikitext-2-v1 --field text --layout wikitext

datasets>=4 no longer runs a hub dataset's loading script; ptb_text_only
still ships one on its main branch, so read the Parquet export the hub makes
of it (revision refs/convert/parquet). DATASET may also be a local .parquet
file. The lines are laid out as in the original files (PTB: " tokens \\n";
WikiText: empty lines as " \\n"), so `scripts/check_assets.py` can compare
the result with the public files' checksums.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence


def format_lines(rows: Iterable[str], layout: str) -> Iterator[str]:
    """Lay out dataset rows as lines of the original token file.

    rows (Iterable[str]): The text field of each row, in order.
    layout (str): "ptb" (rows are stripped sentences) or "wikitext" (rows are
        lines with their newline, "" for an empty line).
    YIELDS (str): One line of the file, newline included.
    """
    for row in rows:
        if layout == "ptb":
            yield f" {row.strip()} \n"
        elif layout == "wikitext":
            yield row if row.strip() else " \n"
        else:
            raise ValueError(f"Unknown layout {layout!r}: use 'ptb' or 'wikitext'")


def iter_rows(dataset: str, split: str, field: str, name: Optional[str], revision: Optional[str]) -> Iterator[str]:
    """Stream one text field of a hub dataset split or a local Parquet file."""
    from datasets import load_dataset

    if Path(dataset).exists():
        ds = load_dataset("parquet", data_files=dataset, split="train", streaming=True)
    else:
        ds = load_dataset(dataset, name, split=split, revision=revision, streaming=True)
    for i, row in enumerate(ds):
        if field not in row:
            raise ValueError(f"{dataset} ({split}): row {i + 1} has no field {field!r}; fields: {', '.join(row)}")
        yield row[field]


def write_atomic(lines: Iterable[str], output: Path) -> int:
    """Write lines to a temporary sibling, renamed into place at the end, so
    an interrupted export never leaves a truncated asset behind."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.partial-", dir=output.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf8", newline="") as f:
            for line in lines:
                f.write(line)
                n += 1
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Export a Hugging Face text dataset split as a token file.")
    parser.add_argument("dataset", help="Hub id (ptb_text_only, Salesforce/wikitext) or a local .parquet file")
    parser.add_argument("split", help="Split: train, validation or test")
    parser.add_argument("output", type=Path, help="Token file to write")
    parser.add_argument("--name", default=None, help="Dataset config, e.g. wikitext-2-v1")
    parser.add_argument("--revision", default=None, help="Hub revision, e.g. refs/convert/parquet")
    parser.add_argument("--field", default="text", help="Text field of a row")
    parser.add_argument("--layout", choices=("ptb", "wikitext"), default="ptb", help="Line layout of the original files")
    args = parser.parse_args(argv)
    try:
        rows = iter_rows(args.dataset, args.split, args.field, args.name, args.revision)
        n = write_atomic(format_lines(rows, args.layout), args.output)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"✘ {err}", file=sys.stderr)
        return 1
    print(f"✔ Wrote {n} lines to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

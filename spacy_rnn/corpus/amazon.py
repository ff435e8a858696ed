"""Amazon reviews to labelled ``.spacy`` corpora, through Hugging Face
``datasets``.

Two sources share one code path:

* the Multi-Domain Sentiment reviews (Blitzer et al. 2007) as a local JSON
  lines file with ``label`` ("positive"/"negative"), ``title`` and ``text``
  (``blitzer.py`` makes one from the raw tarball);
* ``amazon_polarity`` from the Hugging Face hub (``label`` 0/1, ``title``,
  ``content``), streamed, with ``max_examples`` to subsample its 3.6M reviews.

The train/dev/test split is a fixed function of each review (CRC32 of its
id, or of its text when it has none): bucket 0 of 10 is test, 1 is dev, the
rest train. It does not depend on file order, so it is reproducible.
"""
import json
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

import spacy
from wasabi import msg

from .docbin_writer import ShardedDocBinWriter

SPLITS = ("train", "dev", "test")
LABELS = ("positive", "negative")


def split_of(key: str) -> str:
    """Return the fixed split ("train", "dev" or "test") of a review key."""
    bucket = zlib.crc32(key.encode("utf8")) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def iter_reviews(
    source: str, *, hub_split: str = "train", revision: Optional[str] = None
) -> Iterator[Tuple[str, str, str]]:
    """Yield (key, text, label) triples from a local JSONL file or a hub id.

    source (str): Path to a ``.jsonl``/``.json`` or ``.parquet`` file, or a
        Hugging Face dataset id such as "amazon_polarity".
    hub_split (str): Split to read from a hub dataset.
    revision (Optional[str]): Hub revision, e.g. "refs/convert/parquet".
    """
    from datasets import load_dataset

    path = Path(source)
    if path.exists():
        builder = "parquet" if path.suffix == ".parquet" else "json"
        dataset = load_dataset(builder, data_files=str(path), split="train", streaming=True)
    else:
        dataset = load_dataset(source, split=hub_split, streaming=True, revision=revision)
    try:
        for i, row in enumerate(dataset):
            yield _normalise(row, source, i)
    except RecordError:
        raise
    except Exception as err:  # datasets/pyarrow parser errors; ArrowInvalid is a ValueError
        if path.exists() and builder == "json":
            _raise_with_line(path, err)
        raise


class RecordError(ValueError):
    """A record that parsed but holds no usable review; the message names it."""


def _normalise(row: Dict, source: str, index: int) -> Tuple[str, str, str]:
    label = row.get("label")
    if label in (0, 1):
        label = LABELS[0] if label == 1 else LABELS[1]
    if label not in LABELS:
        raise RecordError(
            f"{source}: record {index + 1} has label {label!r}; expected one of "
            f"{', '.join(LABELS)} (or 0/1 as in amazon_polarity)"
        )
    body = row.get("text", row.get("content"))
    if not isinstance(body, str):
        raise RecordError(f"{source}: record {index + 1} has no 'text' or 'content' string")
    title = row.get("title") or ""
    text = f"{title}\n\n{body}" if title else body
    key = str(row.get("unique_id") or row.get("asin", "") + text)
    return key, text, label


def _raise_with_line(path: Path, err: Exception) -> None:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                json.loads(raw.decode("utf8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as line_err:
                raise ValueError(
                    f"{path}, line {n}: not a valid JSON record ({line_err})"
                ) from None
    raise ValueError(f"{path}: could not be read as JSON lines: {err}") from err


def convert_amazon(
    source: str,
    output_dir: Path,
    *,
    max_examples: int = 0,
    lang: str = "en",
    hub_split: str = "train",
    revision: Optional[str] = None,
    shard_size: int = 5000,
) -> Dict[str, int]:
    """Convert reviews into ``output_dir/{train,dev,test}.spacy`` folders.

    RETURNS (Dict[str, int]): Number of docs written per split.
    """
    return write_corpora(
        iter_reviews(source, hub_split=hub_split, revision=revision),
        output_dir,
        max_examples=max_examples,
        lang=lang,
        shard_size=shard_size,
    )


def write_corpora(
    reviews: Iterable[Tuple[str, str, str]],
    output_dir: Path,
    *,
    max_examples: int = 0,
    lang: str = "en",
    shard_size: int = 5000,
) -> Dict[str, int]:
    """Write (key, text, label) triples into ``output_dir/{train,dev,test}.spacy``
    with the fixed CRC32 split. Nothing is replaced unless every review is
    written (see ``ShardedDocBinWriter``).

    RETURNS (Dict[str, int]): Number of docs written per split.
    """
    nlp = spacy.blank(lang)
    output_dir = Path(output_dir)
    writers = {s: ShardedDocBinWriter(output_dir / f"{s}.spacy", shard_size) for s in SPLITS}
    for w in writers.values():
        w.__enter__()
    error = None
    try:
        for i, (key, text, label) in enumerate(reviews):
            if max_examples and i >= max_examples:
                break
            doc = nlp.make_doc(text)
            doc.cats = {lab: float(lab == label) for lab in LABELS}
            writers[split_of(key)].add(doc)
            if (i + 1) % 10000 == 0:
                msg.text(f"converted {i + 1} reviews", show=True)
    except BaseException as err:
        error = err
        raise
    finally:
        for w in writers.values():
            if error is None:
                w.__exit__(None, None, None)
            else:
                w.__exit__(type(error), error, None)
    return {s: w.n_docs for s, w in writers.items()}

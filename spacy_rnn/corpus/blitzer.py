"""The raw Multi-Domain Sentiment tarball (Blitzer, Dredze, Pereira 2007) to
the reviews JSON lines that ``convert-amazon`` reads.

``unprocessed.tar.gz`` from https://www.cs.jhu.edu/~mdredze/datasets/sentiment/
holds ``sorted_data/<domain>/positive.review`` and ``negative.review`` files
(and ``unlabeled.review``, which is skipped) in a pseudo-XML layout. Any
tarball with ``<folder>/<domain>/{positive,negative}.review`` members in this
layout is read the same way (``domain_sentiment_data.tar.gz``, the four
domains of the paper, should be one; it was not available to check)::

    <review>
    <unique_id>
    0785758968:one_of_the_best_crichton_novels:joseph_m
    </unique_id>
    <unique_id>
    12
    </unique_id>
    <asin>
    0785758968
    </asin>
    ...
    <rating>
    5.0
    </rating>
    <title>
    One of the best Crichton novels
    </title>
    ...
    <review_text>
    Sphere by Michael Crichton is an excellant novel. ...
    </review_text>
    </review>

It is not XML: text holds unescaped ``&`` and ``<``, entities such as
``&quot;`` are literal, and bytes are Windows-1252/Latin-1. So this parser
only looks for the known tags (on their own lines or inline, as in
``<rating>5.0</rating>``) and keeps everything between them verbatim, with
surrounding whitespace stripped. A repeated field keeps its first value (the
files give two ``unique_id``s, the first being ``asin:title:reviewer``).

Each review becomes one record with the keys of the project's
``reviews.jsonl``: ``domain`` (the folder name, e.g.
``kitchen_&_housewares``), ``label`` (``positive``/``negative``, from the
file name), ``rating`` (float), ``asin``, ``unique_id``, ``title``, ``text``.
The tarball is streamed member by member and each file line by line, so
memory use does not grow with its size.
"""
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .amazon import LABELS, _normalise, write_corpora

FIELDS = (
    "unique_id",
    "asin",
    "product_name",
    "product_type",
    "helpful",
    "rating",
    "title",
    "date",
    "reviewer",
    "reviewer_location",
    "review_text",
)
REQUIRED = ("unique_id", "rating", "review_text")
RECORD_KEYS = ("domain", "label", "rating", "asin", "unique_id", "title", "text")
_TAG_RE = re.compile(r"<(/?)(review|%s)>" % "|".join(FIELDS))


class BlitzerFormatError(ValueError):
    """A malformed review; the message names the file and line."""


DECODINGS = ("cp1252", "utf8-replace")


def decode_line(raw: bytes, decoding: str = "cp1252") -> str:
    """Decode one line of a review file.

    decoding (str): "cp1252": UTF-8 if the line is valid UTF-8, else
        Windows-1252, with Latin-1 for the five bytes Windows-1252 leaves
        undefined (so "Ren\xe9" reads as "René"). "utf8-replace": UTF-8 with
        U+FFFD for every invalid byte, which is what the project's shared
        reviews.jsonl holds (its non-ASCII letters are all U+FFFD), so this
        keeps its unique_ids, and so its split, for such reviews.
    """
    if decoding == "utf8-replace":
        return raw.decode("utf8", errors="replace")
    if decoding != "cp1252":
        raise ValueError(f"decoding {decoding!r}: expected one of {', '.join(DECODINGS)}")
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return "".join(
            bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in raw
        )


def review_file_of(member_name: str) -> Optional[Tuple[str, str]]:
    """(domain, label) of a ``.../<domain>/{positive,negative}.review`` path,
    or None for any other member."""
    path = PurePosixPath(member_name)
    if path.suffix != ".review" or path.stem not in LABELS or len(path.parts) < 2:
        return None
    return path.parent.name, path.stem


def parse_reviews(
    lines: Iterator[bytes], where: str, domain: str, label: str, decoding: str = "cp1252"
) -> Iterator[Dict]:
    """Parse one ``positive.review``/``negative.review`` file.

    lines (Iterator[bytes]): The file's lines, undecoded.
    where (str): Name used in error messages (tarball:member).
    domain (str): Domain of the records.
    label (str): "positive" or "negative".
    decoding (str): How bytes become text (see ``decode_line``).
    YIELDS (Dict): One record per review, keys as in ``RECORD_KEYS``.
    """
    review_line: Optional[int] = None  # where the open <review> started
    fields: Dict[str, str] = {}
    open_tag: Optional[str] = None
    open_line = 0
    buffer: List[str] = []

    def fail(line_no: int, problem: str) -> BlitzerFormatError:
        start = f" (review starting at line {review_line})" if review_line else ""
        return BlitzerFormatError(f"{where}, line {line_no}: {problem}{start}")

    n = 0
    for n, raw in enumerate(lines, start=1):
        line = decode_line(raw.rstrip(b"\r\n"), decoding)
        pos = 0
        for match in _TAG_RE.finditer(line):
            closing, tag = match.group(1) == "/", match.group(2)
            if open_tag is not None:
                if not closing or tag != open_tag:
                    # Inside a field everything but its own closing tag is
                    # text, except a tag that can't be text: <review>.
                    if tag == "review":
                        slash = "/" if closing else ""
                        raise fail(
                            n,
                            f"<{slash}review> inside <{open_tag}> "
                            f"(opened at line {open_line}, never closed)",
                        )
                    continue
                buffer.append(line[pos:match.start()])
                fields.setdefault(open_tag, "\n".join(buffer).strip())
                open_tag, buffer = None, []
            elif tag == "review":
                if not closing:
                    if review_line is not None:
                        raise fail(n, "<review> before the previous review's </review>")
                    review_line, fields = n, {}
                else:
                    if review_line is None:
                        raise fail(n, "</review> without <review>")
                    yield _record(fields, domain, label, fail, n)
                    review_line = None
            elif closing:
                raise fail(n, f"</{tag}> without <{tag}>")
            elif review_line is None:
                raise fail(n, f"<{tag}> outside <review>")
            else:
                open_tag, open_line, buffer = tag, n, []
            pos = match.end()
        if open_tag is not None:
            buffer.append(line[pos:])
        elif line[pos:].strip():
            place = "any field" if review_line is not None else "<review>"
            raise fail(n, f"text outside {place}: {line[pos:].strip()[:60]!r}")
    if open_tag is not None:
        raise fail(n, f"end of file inside <{open_tag}> (opened at line {open_line})")
    if review_line is not None:
        raise fail(n, "end of file before </review>")


def _record(fields: Dict[str, str], domain: str, label: str, fail, line_no: int) -> Dict:
    missing = [f for f in REQUIRED if f not in fields]
    if missing:
        raise fail(line_no, f"review has no <{'>, <'.join(missing)}>")
    try:
        rating = float(fields["rating"])
    except ValueError:
        raise fail(line_no, f"<rating> is {fields['rating']!r}, not a number") from None
    return {
        "domain": domain,
        "label": label,
        "rating": rating,
        "asin": fields.get("asin", ""),
        "unique_id": fields["unique_id"],
        "title": fields.get("title", ""),
        "text": fields["review_text"],
    }


def iter_blitzer(
    tarball: Union[str, Path],
    domains: Optional[Sequence[str]] = None,
    decoding: str = "cp1252",
) -> Iterator[Dict]:
    """Stream the labelled reviews of a Multi-Domain Sentiment tarball.

    tarball (Union[str, Path]): ``unprocessed.tar.gz`` or another tarball
        in its layout (any compression tarfile reads).
    domains (Optional[Sequence[str]]): Keep only these domain folders
        (e.g. books, dvd, electronics, kitchen_&_housewares); None: all.
    decoding (str): "cp1252" or "utf8-replace" (see ``decode_line``).
    YIELDS (Dict): Records in tarball order, keys as in ``RECORD_KEYS``.
    """
    tarball = Path(tarball)
    if decoding not in DECODINGS:
        raise ValueError(f"decoding {decoding!r}: expected one of {', '.join(DECODINGS)}")
    if not tarball.is_file():
        raise FileNotFoundError(f"{tarball}: no such file (the Multi-Domain Sentiment tarball)")
    wanted = set(domains) if domains else None
    seen = set()
    found_any = False
    try:
        # "r|*": a forward-only stream; nothing is extracted to disk or memory.
        with tarfile.open(tarball, mode="r|*") as archive:
            for member in archive:
                which = review_file_of(member.name) if member.isfile() else None
                if which is None:
                    continue
                found_any = True
                domain, label = which
                seen.add(domain)
                if wanted is not None and domain not in wanted:
                    continue
                f = archive.extractfile(member)
                assert f is not None
                yield from parse_reviews(iter(f), f"{tarball}:{member.name}", domain, label, decoding)
    except tarfile.TarError as err:
        raise BlitzerFormatError(f"{tarball}: not a readable tar archive ({err})") from None
    if not found_any:
        raise BlitzerFormatError(
            f"{tarball}: no <domain>/positive.review or negative.review files in this tarball"
        )
    if wanted is not None and wanted - seen:
        raise BlitzerFormatError(
            f"{tarball}: no review files for domain(s) {', '.join(sorted(wanted - seen))}; "
            f"the tarball has {', '.join(sorted(seen))}"
        )


def convert_blitzer(
    tarball: Union[str, Path],
    output_jsonl: Union[str, Path],
    *,
    domains: Optional[Sequence[str]] = None,
    decoding: str = "cp1252",
    corpus_dir: Optional[Union[str, Path]] = None,
    lang: str = "en",
    shard_size: int = 5000,
) -> Dict[str, int]:
    """Write the tarball's labelled reviews as JSON lines (UTF-8, one record a
    line) and, with ``corpus_dir``, also as ``corpus_dir/{train,dev,test}.spacy``
    with ``convert-amazon``'s fixed split, in one pass. Nothing is replaced
    unless every review parsed.

    RETURNS (Dict[str, int]): Reviews per "domain/label", and per split when
        ``corpus_dir`` is given.
    """
    output_jsonl = Path(output_jsonl)
    output_jsonl.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_jsonl.with_name(f".{output_jsonl.name}.partial-{os.getpid()}")
    counts: Dict[str, int] = {}
    try:
        with tmp.open("w", encoding="utf8", newline="\n") as out:

            def records() -> Iterator[Tuple[str, str, str]]:
                for i, record in enumerate(iter_blitzer(tarball, domains, decoding)):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    group = f"{record['domain']}/{record['label']}"
                    counts[group] = counts.get(group, 0) + 1
                    yield _normalise(record, str(tarball), i)

            if corpus_dir is None:
                for _ in records():
                    pass
            else:
                splits = write_corpora(records(), Path(corpus_dir), lang=lang, shard_size=shard_size)
                counts.update(splits)
        os.replace(tmp, output_jsonl)
    finally:
        if tmp.exists():
            tmp.unlink()
    return counts

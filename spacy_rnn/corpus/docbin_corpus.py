"""``spacy-rnn.Corpus.v1``: spaCy's ``spacy.Corpus.v1`` reader, with errors
that name the file.

spaCy's reader raises E1014 ("It doesn't look like the data is in DocBin
format") without saying which file, which is no help with a folder of many
shards; other kinds of damage surface as bare ``KeyError``s or msgpack
errors. This reader takes the same arguments, lets spaCy's ``Corpus`` do all
the work, and turns any failure to read a ``.spacy`` file into a
``CorpusFileError`` (a ``ValueError``) that names the file, says what is
wrong with it and what to do.
"""
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

import srsly
from spacy import util
from spacy.errors import Errors
from spacy.tokens import Doc, DocBin
from spacy.training import Corpus, Example
from spacy.training.corpus import FILE_TYPE
from spacy.util import registry
from spacy.vocab import Vocab

if TYPE_CHECKING:
    from spacy.language import Language

DOCBIN_KEYS = ("attrs", "strings", "lengths", "spaces", "tokens", "cats")


class CorpusFileError(ValueError):
    """A ``.spacy`` file that cannot be read; the message names it."""


@registry.readers("spacy-rnn.Corpus.v1")
def create_docbin_reader(
    path: Optional[Path],
    gold_preproc: bool,
    max_length: int = 0,
    limit: int = 0,
    augmenter: Optional[Callable] = None,
) -> Callable[["Language"], Iterable[Example]]:
    """Read ``.spacy`` files like ``spacy.Corpus.v1`` (same arguments), but
    name the file and the problem when one cannot be read.

    path (Optional[Path]): A ``.spacy`` file or a folder searched recursively.
    gold_preproc (bool): Use gold tokenisation and sentences.
    max_length (int): Split or skip docs longer than this (0: no limit).
    limit (int): Read at most this many docs (0: all).
    augmenter (Optional[Callable]): Data augmentation callback.
    RETURNS (Callable[[Language], Iterable[Example]]): The corpus.
    """
    if path is None:
        raise ValueError(Errors.E913)
    util.logger.debug("Loading corpus from path: %s", path)
    return NamedFileCorpus(
        path,
        gold_preproc=gold_preproc,
        max_length=max_length,
        limit=limit,
        augmenter=augmenter,
    )


class NamedFileCorpus(Corpus):
    """spaCy's ``Corpus`` whose read errors name the file."""

    def read_docbin(self, vocab: Vocab, locs: Iterable[Union[str, Path]]) -> Iterator[Doc]:
        # Same loop as spaCy's Corpus.read_docbin, with each file's loading
        # and decoding wrapped. A ``yield`` inside ``try`` is safe: errors in
        # the consumer are not thrown back into this generator.
        i = 0
        for loc in locs:
            loc = util.ensure_path(loc)
            if not loc.parts[-1].endswith(FILE_TYPE):
                continue
            try:
                docs = read_docbin_file(loc, vocab)
                for doc in docs:
                    if len(doc):
                        yield doc
                        i += 1
                        if self.limit >= 1 and i >= self.limit:
                            break
            except CorpusFileError:
                raise
            except Exception as err:
                raise CorpusFileError(describe_bad_docbin(loc, err)) from err


def read_docbin_file(path: Path, vocab: Vocab) -> Iterator[Doc]:
    """The docs of one ``.spacy`` file (loaded at once, decoded lazily)."""
    return DocBin().from_disk(path).get_docs(vocab)


def describe_bad_docbin(path: Path, err: Exception) -> str:
    """Say what is wrong with a ``.spacy`` file that failed to load."""
    fix = (
        "Re-create it with the converter that made it (e.g. `python -m spacy "
        "convert`, `python -m spacy_rnn convert-amazon` or `convert-stream`), or "
        "remove it from the corpus folder."
    )
    what = _diagnose(path)
    if what is None:
        what = f"its DocBin data could not be decoded ({type(err).__name__}: {err})"
    return f"Cannot read training corpus file {path}: {what}. {fix}"


def _diagnose(path: Path) -> Optional[str]:
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"the file cannot be read ({err})"
    if not data:
        return "the file is empty (0 bytes), so it is truncated or was never written"
    try:
        raw = zlib.decompress(data)
    except zlib.error as err:
        # A complete zlib stream starts with a header (0x78 ..); if the
        # header is fine but the stream ends early, the file is truncated.
        partial = zlib.decompressobj()
        try:
            partial.decompress(data)
        except zlib.error:
            return (
                f"it is not a DocBin (.spacy) file: it is not zlib-compressed "
                f"({len(data)} bytes starting {data[:8]!r}; zlib: {err})"
            )
        if not partial.eof:
            return (
                f"the file is truncated: its zlib stream ends early after "
                f"{len(data)} bytes (an interrupted write or copy?)"
            )
        return f"its zlib stream is damaged ({err})"
    try:
        msg = srsly.msgpack_loads(raw)
    except Exception as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        return (
            f"it decompresses but is not valid msgpack data, so it is not a DocBin "
            f"({detail})"
        )
    if not isinstance(msg, dict):
        return f"it holds msgpack data of type {type(msg).__name__}, not a DocBin"
    missing = [k for k in DOCBIN_KEYS if k not in msg]
    if missing:
        return (
            f"it holds msgpack data but not a DocBin (missing keys "
            f"{', '.join(missing)}; written by another tool or another version?)"
        )
    return None

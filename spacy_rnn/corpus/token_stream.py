"""Token streams for language modelling (PTB, WikiText style files).

A token file is one continuous stream: whitespace-separated tokens, with an
end-of-sentence token ``<eos>`` appended to every line, empty lines included
(that is how the standard WikiText-2 counts are made). Lines are read
through Hugging Face ``datasets`` in streaming mode, which splits on "\\n"
only and keeps empty lines.

Two consumers:

* ``convert_stream`` writes ``.spacy`` docs of consecutive lines with an
  explicit ``<eos>`` token at each line end, atomically.
* ``spacy-rnn.TokenStreamCorpus.v1`` turns a corpus back into one stream and
  deals it into parallel columns, so ``spacy train`` sees successive windows
  of the same text rather than unrelated one-line docs.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Tuple, Union

from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import registry

from .docbin_writer import ShardedDocBinWriter

if TYPE_CHECKING:
    from spacy.language import Language

EOS = "<eos>"
UNK = "<unk>"
# Key in ``Doc.user_data`` with [column, chunk] of a stream window; the
# ``rnn_lm`` component carries hidden state from chunk k-1 to chunk k.
STREAM_KEY = "spacy_rnn_lm_stream"
TEXT_SUFFIXES = (".txt", ".tokens", ".raw")


class TokenFileError(ValueError):
    """A token file cannot be read (bad encoding, missing)."""


def iter_token_lines(path: Union[str, Path]) -> Iterator[List[str]]:
    """Yield the tokens of each line of a token file (empty lines give []).

    path (Union[str, Path]): A UTF-8 text file.
    YIELDS (List[str]): The whitespace-separated tokens of one line.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenFileError(f"Token file not found: {path}")
    from datasets import load_dataset

    try:
        ds = load_dataset("text", data_files=str(path), split="train", streaming=True)
        for row in ds:
            yield row["text"].split()
    except UnicodeDecodeError as err:
        line, col = _locate_bad_utf8(path)
        raise TokenFileError(
            f"{path}: line {line} is not valid UTF-8 (byte {col} of the line: "
            f"{err.reason}); fix or re-encode the file"
        ) from None


def iter_stream(path: Union[str, Path], eos: str = EOS) -> Iterator[str]:
    """Yield every token of a token file, with ``eos`` after each line."""
    for words in iter_token_lines(path):
        yield from words
        yield eos


def read_stream(path: Union[str, Path], eos: str = EOS) -> List[str]:
    """All tokens of a token file or ``.spacy`` corpus as one list.

    path (Union[str, Path]): A token file, a ``.spacy`` file or a folder of them.
    eos (str): Token appended to each line of a token file.
    RETURNS (List[str]): The stream.
    """
    path = Path(path)
    if path.is_file() and path.suffix != ".spacy":
        return list(iter_stream(path, eos))
    from spacy.vocab import Vocab

    vocab = Vocab()
    tokens: List[str] = []
    for doc in iter_docbin_docs(path, vocab):
        tokens.extend(t.text for t in doc)
    return tokens


def iter_docbin_docs(path: Union[str, Path], vocab) -> Iterator[Doc]:
    """Docs of a ``.spacy`` file or of every ``.spacy`` file under a folder, in
    sorted path order (shards are numbered, so this is the stream order)."""
    path = Path(path)
    if not path.exists():
        raise TokenFileError(f"Corpus not found: {path}")
    files = [path] if path.is_file() else sorted(path.rglob("*.spacy"))
    if not files:
        raise TokenFileError(f"No .spacy files under {path}")
    for f in files:
        yield from DocBin().from_disk(f).get_docs(vocab)


def convert_stream(
    input_file: Union[str, Path],
    output_dir: Union[str, Path],
    lines_per_doc: int = 100,
    lang: str = "en",
    shard_size: int = 2000,
) -> Tuple[int, int, int]:
    """Convert a token file into ``.spacy`` shards of consecutive lines.

    Nothing is written unless the whole file converts.

    input_file (Union[str, Path]): PTB / WikiText style token file.
    output_dir (Union[str, Path]): Destination folder (replaced on success).
    lines_per_doc (int): Lines per doc (at least 1).
    lang (str): Language of the vocabulary the docs are made with.
    shard_size (int): Docs per ``.spacy`` shard.
    RETURNS (Tuple[int, int, int]): Lines, tokens (``<eos>`` included) and docs.
    """
    import spacy

    if lines_per_doc < 1:
        raise ValueError(f"--lines-per-doc must be at least 1, got {lines_per_doc}")
    vocab = spacy.blank(lang).vocab
    n_lines = n_tokens = 0
    with ShardedDocBinWriter(output_dir, shard_size=shard_size) as writer:
        words: List[str] = []
        for line in iter_token_lines(input_file):
            words.extend(line)
            words.append(EOS)
            n_lines += 1
            if n_lines % lines_per_doc == 0:
                writer.add(Doc(vocab, words=words))
                n_tokens += len(words)
                words = []
        if words:
            writer.add(Doc(vocab, words=words))
            n_tokens += len(words)
        n_docs = writer.n_docs
    return n_lines, n_tokens, n_docs


def split_columns(tokens: List[str], n_streams: int) -> List[List[str]]:
    """Deal a stream into ``n_streams`` contiguous columns whose lengths
    differ by at most one; every token lands in exactly one column."""
    n_streams = max(1, min(n_streams, len(tokens))) if tokens else 1
    base, extra = divmod(len(tokens), n_streams)
    columns = []
    start = 0
    for i in range(n_streams):
        end = start + base + (1 if i < extra else 0)
        columns.append(tokens[start:end])
        start = end
    return columns


class TokenStreamCorpus:
    """Iterate a token stream as parallel windows for truncated BPTT.

    The stream is dealt into ``n_streams`` columns; chunk k of every column is
    yielded before chunk k+1 of any, so with ``spacy.batch_by_sequence.v1``
    of size ``n_streams`` (and ``max_epochs = -1``, which stops spaCy from
    shuffling) each batch continues the previous one and ``rnn_lm`` carries
    its hidden state across batches. ``doc_length = 0`` yields each column
    whole: the standard-protocol evaluation set-up for a dev corpus.

    path (Union[str, Path]): ``.spacy`` file / folder, or a token file.
    n_streams (int): Parallel columns (the batch size in sequences).
    doc_length (int): Tokens per yielded doc; 0 for whole columns.
    limit (int): Use only the first ``limit`` tokens of the stream (0: all).
    """

    def __init__(
        self,
        path: Union[str, Path],
        n_streams: int = 20,
        doc_length: int = 35,
        limit: int = 0,
    ):
        if n_streams < 1 or doc_length < 0 or limit < 0:
            raise ValueError(
                f"TokenStreamCorpus: n_streams must be >= 1 and doc_length, "
                f"limit >= 0; got {n_streams}, {doc_length}, {limit}"
            )
        self.path = Path(path)
        self.n_streams = n_streams
        self.doc_length = doc_length
        self.limit = limit
        self._columns = None

    def __call__(self, nlp) -> Iterator[Example]:
        if self._columns is None:
            tokens = read_stream(self.path)
            if self.limit:
                tokens = tokens[: self.limit]
            self._columns = split_columns(tokens, self.n_streams)
        columns = self._columns
        longest = max(len(c) for c in columns)
        size = self.doc_length or longest
        for k, start in enumerate(range(0, longest, size)):
            for c, column in enumerate(columns):
                words = column[start : start + size]
                if not words:
                    continue
                predicted = Doc(nlp.vocab, words=words)
                predicted.user_data[STREAM_KEY] = [c, k]
                yield Example(predicted, Doc(nlp.vocab, words=words))


@registry.readers("spacy-rnn.TokenStreamCorpus.v1")
def create_token_stream_reader(
    path: str,
    n_streams: int = 20,
    doc_length: int = 35,
    limit: int = 0,
) -> Callable[["Language"], Iterable[Example]]:
    """Read a corpus as one token stream cut into parallel windows.

    path (str): A ``.spacy`` file or folder (e.g. from ``convert-stream``),
        or a raw token file (``<eos>`` is then added to each line).
    n_streams (int): Parallel columns; use the same number as the batch size
        of ``spacy.batch_by_sequence.v1``.
    doc_length (int): Tokens per doc, usually the component's ``bptt``;
        0 yields each column as one doc (for dev / evaluation corpora).
    limit (int): Only the first ``limit`` tokens (0: all).
    RETURNS (Callable[[Language], Iterable[Example]]): The reader.
    """
    return TokenStreamCorpus(path, n_streams=n_streams, doc_length=doc_length, limit=limit)


def _locate_bad_utf8(path: Path) -> Tuple[int, int]:
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return i, err.start + 1
    return 0, 0

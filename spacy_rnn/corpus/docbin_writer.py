"""Write docs to a folder of ``.spacy`` shards without ever leaving a
half-written corpus behind.

Shards go to a temporary sibling folder that is renamed into place only when
every shard is written, so an interrupted conversion leaves either the old
output or nothing: a later step can never take a partial corpus as complete.
``spacy.Corpus.v1`` reads every ``.spacy`` file in a folder, so the shards
need no index.
"""
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

from spacy.tokens import Doc, DocBin


class ShardedDocBinWriter:
    """Context manager that collects docs into shards of ``shard_size``.

    output (Union[str, Path]): Destination folder (replaced on success).
    shard_size (int): Docs per shard; bounds memory use.
    attrs (Optional[Iterable[str]]): Token attributes to store.
    """

    def __init__(
        self,
        output: Union[str, Path],
        shard_size: int = 5000,
        store_user_data: bool = False,
        attrs: Optional[Iterable[str]] = None,
    ):
        self.output = Path(output)
        self.shard_size = shard_size
        self.store_user_data = store_user_data
        self.attrs = list(attrs) if attrs is not None else None
        self.n_docs = 0
        self.n_shards = 0
        self._tmp: Optional[Path] = None
        self._bin: Optional[DocBin] = None

    def __enter__(self) -> "ShardedDocBinWriter":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.output.name}.partial-", dir=self.output.parent)
        )
        self._bin = self._new_bin()
        return self

    def add(self, doc: Doc) -> None:
        assert self._bin is not None, "use ShardedDocBinWriter as a context manager"
        self._bin.add(doc)
        self.n_docs += 1
        if len(self._bin) >= self.shard_size:
            self._flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        try:
            if exc_type is not None:
                return
            if self._bin is not None and len(self._bin):
                self._flush()
            if self.output.exists():
                if self.output.is_dir():
                    shutil.rmtree(self.output)
                else:
                    self.output.unlink()
            self._tmp.rename(self.output)
            self._tmp = None
        finally:
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _new_bin(self) -> DocBin:
        if self.attrs is None:
            return DocBin(store_user_data=self.store_user_data)
        return DocBin(attrs=self.attrs, store_user_data=self.store_user_data)

    def _flush(self) -> None:
        assert self._bin is not None and self._tmp is not None
        self._bin.to_disk(self._tmp / f"shard-{self.n_shards:05d}.spacy")
        self.n_shards += 1
        self._bin = self._new_bin()

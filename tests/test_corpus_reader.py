"""``spacy-rnn.Corpus.v1``: spaCy's DocBin reader, with read errors that name
the file and say what is wrong with it."""
import subprocess
import sys
import zlib

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from spacy.util import registry

from spacy_rnn.corpus.docbin_corpus import CorpusFileError, create_docbin_reader

from .util import ROOT


@pytest.fixture(scope="module")
def nlp():
    return spacy.blank("en")


def _docbin_bytes(nlp, n=20, label="positive"):
    db = DocBin()
    for i in range(n):
        doc = nlp.make_doc(f"review number {i} is {label}")
        doc.cats = {"positive": float(label == "positive"), "negative": float(label != "positive")}
        db.add(doc)
    return db.to_bytes()


def _read(path, nlp, **kwargs):
    reader = registry.readers.get("spacy-rnn.Corpus.v1")(path, gold_preproc=False, **kwargs)
    return list(reader(nlp))


def test_reader_is_registered_and_reads_like_spacys(nlp, tmp_path):
    assert registry.readers.get("spacy-rnn.Corpus.v1") is create_docbin_reader
    path = tmp_path / "good.spacy"
    path.write_bytes(_docbin_bytes(nlp))
    ours = _read(path, nlp, limit=5)
    theirs = list(registry.readers.get("spacy.Corpus.v1")(path, gold_preproc=False, limit=5)(nlp))
    assert [eg.reference.text for eg in ours] == [eg.reference.text for eg in theirs]
    assert [eg.reference.cats for eg in ours] == [eg.reference.cats for eg in theirs]
    assert len(_read(path, nlp)) == 20


def test_truncated_file_is_named(nlp, tmp_path):
    path = tmp_path / "train.spacy"
    data = _docbin_bytes(nlp)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusFileError) as info:
        _read(path, nlp)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    assert "Re-create it with the converter" in message
    assert isinstance(info.value, ValueError)


def test_random_bytes_file_is_named(nlp, tmp_path):
    path = tmp_path / "noise.spacy"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a DocBin") as info:
        _read(path, nlp)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "payload,expected",
    [(zlib.compress(b"\xc1\xc1 not msgpack"), "not valid msgpack"),
     (zlib.compress(srsly.msgpack_dumps({"hello": "world"})), "missing keys"),
     (b"", "empty")],
    ids=["wrong-msgpack", "other-msgpack", "empty"],
)
def test_other_damage_is_named(nlp, tmp_path, payload, expected):
    path = tmp_path / "bad.spacy"
    path.write_bytes(payload)
    with pytest.raises(CorpusFileError, match=expected) as info:
        _read(path, nlp)
    assert str(path) in str(info.value)


def test_folder_names_the_bad_file(nlp, tmp_path):
    folder = tmp_path / "train.spacy"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "shard-00000.spacy").write_bytes(_docbin_bytes(nlp))
    data = _docbin_bytes(nlp, label="negative")
    bad = folder / "shard-00001.spacy"
    bad.write_bytes(data[:-10])
    with pytest.raises(CorpusFileError) as info:
        _read(folder, nlp)
    message = str(info.value)
    assert str(bad) in message
    assert "shard-00000" not in message


def test_spacy_train_names_the_bad_file(tmp_path):
    nlp = spacy.blank("en")
    good = tmp_path / "dev.spacy"
    db = DocBin()
    for text, label in [("great", "positive"), ("awful", "negative")]:
        doc = nlp.make_doc(text)
        doc.cats = {"positive": float(label == "positive"), "negative": float(label == "negative")}
        db.add(doc)
    db.to_disk(good)
    corpus = tmp_path / "train"
    corpus.mkdir()
    db.to_disk(corpus / "part-0.spacy")
    bad = corpus / "part-1.spacy"
    bad.write_bytes((corpus / "part-0.spacy").read_bytes()[:30])
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         "--output", str(tmp_path / "out"), "--paths.train", str(corpus), "--paths.dev", str(good),
         "--training.max_steps", "2",
         "--components.textcat.model.tok2vec.embed.width", "32",
         "--components.textcat.model.tok2vec.encode.width", "32"],
        capture_output=True, text=True,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "CorpusFileError" in out and str(bad) in out and "truncated" in out, out[-3000:]

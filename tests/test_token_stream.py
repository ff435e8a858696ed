"""Token streams: conversion to .spacy, the stream reader, and bad files."""
import subprocess
import sys

import pytest
import spacy

from spacy_rnn.corpus.token_stream import (
    STREAM_KEY,
    TokenFileError,
    TokenStreamCorpus,
    convert_stream,
    iter_docbin_docs,
    read_stream,
    split_columns,
)

from .util import FIXTURES

STREAM = FIXTURES / "stream_tiny.txt"


def test_read_stream_adds_eos_per_line_and_keeps_empty_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" a b \n\n c\n\n", encoding="utf-8")
    assert read_stream(path) == ["a", "b", "<eos>", "<eos>", "c", "<eos>", "<eos>"]
    lines = STREAM.read_text().splitlines()
    assert len(read_stream(STREAM)) == sum(len(line.split()) + 1 for line in lines) == 318


def test_convert_stream_writes_consecutive_lines(tmp_path):
    out = tmp_path / "train.spacy"
    n_lines, n_tokens, n_docs = convert_stream(STREAM, out, lines_per_doc=10)
    assert (n_lines, n_tokens, n_docs) == (42, 318, 5)
    docs = list(iter_docbin_docs(out, spacy.blank("en").vocab))
    assert [sum(t.text == "<eos>" for t in d) for d in docs] == [10, 10, 10, 10, 2]
    assert all(d[-1].text == "<eos>" for d in docs)
    assert [t.text for d in docs for t in d] == read_stream(STREAM)
    # the stream read back from the corpus is the same stream
    assert read_stream(out) == read_stream(STREAM)


def test_convert_stream_cli(tmp_path):
    out = tmp_path / "corpus" / "train.spacy"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-stream", str(STREAM), str(out),
         "--lines-per-doc", "7"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "318 tokens" in result.stdout
    assert len(list(iter_docbin_docs(out, spacy.blank("en").vocab))) == 6


def test_invalid_utf8_names_file_and_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nanother\nbroken \xff\xfe here\nlast\n")
    out = tmp_path / "out" / "train.spacy"
    with pytest.raises(TokenFileError, match=r"bad\.txt: line 3 is not valid UTF-8"):
        convert_stream(bad, out)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no partial shard folder
    # an existing corpus is left untouched by a failed conversion
    convert_stream(STREAM, out)
    before = sorted(p.name for p in out.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-stream", str(bad), str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "bad.txt: line 3 is not valid UTF-8" in " ".join(result.stdout.split())
    assert sorted(p.name for p in out.iterdir()) == before
    assert len([p for p in (tmp_path / "out").iterdir()]) == 1


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(TokenFileError, match="not found"):
        read_stream(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="lines-per-doc"):
        convert_stream(STREAM, tmp_path / "x", lines_per_doc=0)
    with pytest.raises(ValueError):
        TokenStreamCorpus(STREAM, n_streams=0)


def test_split_columns_covers_every_token_once():
    tokens = [str(i) for i in range(23)]
    columns = split_columns(tokens, 5)
    assert [len(c) for c in columns] == [5, 5, 5, 4, 4]
    assert sum(columns, []) == tokens
    assert split_columns(tokens[:2], 5) == [["0"], ["1"]]
    assert split_columns([], 3) == [[]]


def test_corpus_yields_chunks_of_all_columns_in_order():
    nlp = spacy.blank("en")
    examples = list(TokenStreamCorpus(STREAM, n_streams=4, doc_length=10)(nlp))
    keys = [eg.predicted.user_data[STREAM_KEY] for eg in examples]
    assert keys[:5] == [[0, 0], [1, 0], [2, 0], [3, 0], [0, 1]]
    columns = split_columns(read_stream(STREAM), 4)
    rebuilt = [[] for _ in columns]
    for eg, (c, _) in zip(examples, keys):
        assert [t.text for t in eg.predicted] == [t.text for t in eg.reference]
        rebuilt[c].extend(t.text for t in eg.predicted)
    assert rebuilt == columns
    # doc_length 0: each column whole (the dev / evaluation set-up)
    whole = list(TokenStreamCorpus(STREAM, n_streams=3, doc_length=0)(nlp))
    assert [len(eg.predicted) for eg in whole] == [106, 106, 106]
    limited = list(TokenStreamCorpus(STREAM, n_streams=1, doc_length=0, limit=50)(nlp))
    assert len(limited[0].predicted) == 50


def test_reader_is_registered():
    reader = spacy.registry.readers.get("spacy-rnn.TokenStreamCorpus.v1")
    corpus = reader(path=str(STREAM), n_streams=2, doc_length=35)
    assert sum(len(eg.predicted) for eg in corpus(spacy.blank("en"))) == 318


def test_real_corpora_token_counts(shared_data):
    """Token counts of the standard protocol (one <eos> per line, empty
    lines included) through the datasets-based reader."""
    assert len(read_stream(shared_data / "ptb" / "ptb.valid.txt")) == 73_760
    wiki = read_stream(shared_data / "wikitext-2" / "wiki.valid.tokens")
    assert len(wiki) == 217_646
    assert len(set(read_stream(shared_data / "ptb" / "ptb.test.txt"))) <= 10_000

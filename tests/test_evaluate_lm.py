"""``python -m spacy_rnn evaluate-lm``: standard-protocol perplexity."""
import json
import math
import subprocess
import sys

import numpy
import pytest
import spacy
from spacy.tokens import Doc
from thinc.api import fix_random_seed

from spacy_rnn.cli.evaluate_lm import evaluate_lm_file
from spacy_rnn.corpus.token_stream import TokenStreamCorpus, read_stream

from .util import FIXTURES

STREAM = FIXTURES / "stream_tiny.txt"


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """An untrained tiny LM whose vocabulary comes from the fixture: real
    corpora then mostly map to <unk>, which is all counting needs."""
    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("rnn_lm", config={"vocab_size": 20, "embed_width": 8, "hidden_width": 8,
                                   "depth": 1, "bptt": 35})
    nlp.initialize(lambda: TokenStreamCorpus(STREAM, n_streams=1, doc_length=0)(nlp))
    path = tmp_path_factory.mktemp("lm") / "model"
    nlp.to_disk(path)
    return path


def test_every_token_counted_and_nll_consistent(tiny_lm_dir):
    result = evaluate_lm_file(tiny_lm_dir, STREAM, batch_size=3, bptt=5)
    assert result["tokens"] == 318
    assert result["perplexity"] == pytest.approx(math.exp(result["nll"]))
    assert result["oov"] == 0
    # One column, any window length: the same as scoring the stream as a doc.
    nlp = spacy.load(tiny_lm_dir)
    doc = nlp(Doc(nlp.vocab, words=read_stream(STREAM)))
    one = evaluate_lm_file(tiny_lm_dir, STREAM, batch_size=1, bptt=7)
    assert one["nll"] == pytest.approx(-doc._.lm_logprob / len(doc), rel=1e-5)


def test_cli_prints_one_json_object_and_writes_output(tiny_lm_dir, tmp_path):
    out = tmp_path / "metrics" / "test.json"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "evaluate-lm", str(tiny_lm_dir), str(STREAM),
         "--output", str(out), "--batch-size", "10", "--bptt", "35"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert {"tokens", "nll", "perplexity"} <= set(printed)
    assert printed["tokens"] == 318 and printed["batch_size"] == 10


def test_cli_bad_utf8_is_a_clear_error(tiny_lm_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b\n\xc3\x28 c\n")
    out = tmp_path / "m.json"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "evaluate-lm", str(tiny_lm_dir), str(bad),
         "--output", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "bad.txt: line 2 is not valid UTF-8" in " ".join(result.stdout.split())
    assert not out.exists()


def test_ptb_and_wikitext2_test_token_counts(tiny_lm_dir, shared_data):
    ptb = evaluate_lm_file(tiny_lm_dir, shared_data / "ptb" / "ptb.test.txt")
    assert ptb["tokens"] == 82_430
    assert math.isfinite(ptb["perplexity"])
    wiki = evaluate_lm_file(tiny_lm_dir, shared_data / "wikitext-2" / "wiki.test.tokens")
    assert wiki["tokens"] == 245_569
    assert math.isfinite(wiki["nll"])


@pytest.mark.slow
def test_ptb_cpu_config_reaches_stated_perplexity(shared_data, tmp_path):
    """Train configs/lm_ptb_cpu.cfg as shipped (3,000 steps: 6.4 minutes wall
    with OMP_NUM_THREADS=1 on a 2-core CPU shared with one other job) and
    check the standard-protocol test perplexity: measured 108.4 (best dev
    113.0); 133.3 with the settings before session 15."""
    corpus = tmp_path / "corpus"
    for split in ("train", "valid"):
        subprocess.run(
            [sys.executable, "-m", "spacy_rnn", "convert-stream",
             str(shared_data / "ptb" / f"ptb.{split}.txt"), str(corpus / f"{split}.spacy")],
            check=True, capture_output=True,
        )
    from .util import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "lm_ptb_cpu.cfg"),
         "--output", str(tmp_path / "training"),
         "--paths.train", str(corpus / "train.spacy"), "--paths.dev", str(corpus / "valid.spacy")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    scores = evaluate_lm_file(tmp_path / "training" / "model-best", shared_data / "ptb" / "ptb.test.txt")
    assert scores["tokens"] == 82_430
    assert scores["perplexity"] < 115
    assert numpy.isfinite(scores["nll"])

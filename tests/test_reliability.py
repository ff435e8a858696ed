"""Hostile input, hostile training, reproducibility and multiprocessing."""
import os
import subprocess
import sys

import numpy
import pytest
import spacy
import srsly
from thinc.api import Adam, fix_random_seed

from .util import ROOT, blank_with_textcat, fixture_examples

SMALL = [
    "--components.textcat.model.tok2vec.embed.width", "32",
    "--components.textcat.model.tok2vec.encode.width", "32",
]


def _train(corpus, output, *extra):
    return subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         "--output", str(output), "--paths.train", str(corpus / "train.spacy"),
         "--paths.dev", str(corpus / "train.spacy"), *SMALL, *extra],
        capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def trained_nlp():
    fix_random_seed(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    return nlp


HOSTILE = [
    "",
    " ",
    "\n\n\t  \r\n",
    "\x00\x01\x02\x1b[31m\x7f",
    "Ελληνικά русский 中文 العربية עברית हिन्दी",
    "😀🔥👍🏽 👨‍👩‍👧‍👦 🇬🇧",
    "a" * 100_000,
    "\u202e\u200b\ufeff zero width and bidi",
    "word " * 20_000,
]


def test_hostile_text_sweep(trained_nlp):
    batch = HOSTILE + HOSTILE[::-1]
    for doc in trained_nlp.pipe(batch, batch_size=4):
        values = list(doc.cats.values())
        assert len(values) == 2
        assert all(numpy.isfinite(v) for v in values), (doc.text[:30], doc.cats)


def _rss_high_water_reset():
    """Reset the kernel's peak-RSS counter (VmHWM); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# The encoder's peak memory on one long doc in inference, measured with
# benchmarks/long_doc_memory.py (width 32, depth 1, 1M tokens): 133 MB, i.e.
# its own output (4 bytes x width per token) plus ~5 MB. Unchunked it was
# 1.0 GB. Bound: the output, once per layer kept alive at a time (at most
# two), plus a constant for the chunked work space and allocator slack.
ENCODER_CONSTANT_BYTES = 64e6


@pytest.mark.slow
def test_million_token_doc(trained_nlp):
    import gc
    import resource

    # spaCy refuses texts over nlp.max_length characters (E088); a user with
    # such docs raises it, as here.
    trained_nlp.max_length = 10_000_000
    doc = trained_nlp("word " * 1_000_000)
    assert len(doc) == 1_000_000
    assert all(numpy.isfinite(v) for v in doc.cats.values())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    # Measured 1.8 GB for the whole process (2.6 GB before chunking); most
    # of it is spaCy's MultiHashEmbed (~1.2 KB per token at width 32).
    assert peak_gb < 3.5, peak_gb

    tok2vec = trained_nlp.get_pipe(trained_nlp.pipe_names[0]).model.get_ref("tok2vec")
    embed, encode = tok2vec.layers[0], tok2vec.layers[-1]
    X = embed.predict([doc])
    gc.collect()
    if not _rss_high_water_reset():
        pytest.skip("cannot reset peak RSS (/proc/self/clear_refs) here")
    start = _rss("VmRSS")
    Y = encode.predict(X)
    encoder_peak = _rss("VmHWM") - start
    assert encode.name == "rnn_encoder", encode.name
    width = Y[0].shape[1]
    layers_alive = 1 if encode.attrs.get("depth", 1) == 1 else 2
    bound = layers_alive * 4 * width * len(doc) + ENCODER_CONSTANT_BYTES
    print(f"million-token doc: process peak {peak_gb:.2f} GB, encoder peak {encoder_peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB")
    assert encoder_peak < bound, (encoder_peak, bound)


@pytest.mark.parametrize("poisoned", ["output", "gradient"])
def test_encoder_refuses_non_finite_values_before_backward(poisoned):
    from spacy_rnn.layers.rnn_encoder import RNNEncoder

    encoder = RNNEncoder(4, bidirectional=False)
    X = [numpy.ones((3, 4), dtype="float32"), numpy.ones((2, 4), dtype="float32")]
    encoder.initialize(X=X)
    if poisoned == "output":
        X[1][1, 2] = numpy.nan
    Ys, backprop = encoder.begin_update(X)
    dYs = [numpy.ones_like(Y) for Y in Ys]
    if poisoned == "gradient":
        dYs[0][0, 0] = numpy.inf
    weights = [p.detach().clone() for p in encoder.shims[0]._model.parameters()]
    with pytest.raises(FloatingPointError, match=f"in the {poisoned} during training"):
        backprop(dYs)
    # Raised before torch's backward: no gradient reached the weights.
    for p, w in zip(encoder.shims[0]._model.parameters(), weights):
        assert p.grad is None and bool((p.detach() == w).all())


def test_nan_loss_stops_training_and_keeps_good_models(fixture_corpus, tmp_path):
    result = _train(
        fixture_corpus, tmp_path,
        "--code", str(ROOT / "tests" / "helpers" / "poison_loss.py"),
        "--training.before_update", '{"@callbacks":"spacy_rnn_test.poison_loss.v1"}',
        "--training.max_steps", "20", "--training.eval_frequency", "2",
    )
    assert result.returncode != 0
    assert "non-finite" in result.stdout + result.stderr
    for name in ("model-best", "model-last"):
        nlp = spacy.load(tmp_path / name)
        cats = nlp("works great").cats
        assert all(numpy.isfinite(v) for v in cats.values()), (name, cats)
        for proc_name, proc in nlp.pipeline:
            for node in proc.model.walk():
                for param in (node.get_param(p) for p in node.param_names if node.has_param(p)):
                    assert numpy.isfinite(param).all()


def test_same_seed_same_scores(fixture_corpus, tmp_path):
    scores = []
    for run in ("a", "b"):
        result = _train(fixture_corpus, tmp_path / run, "--training.max_steps", "8",
                        "--training.eval_frequency", "4")
        assert result.returncode == 0, result.stderr
        meta = srsly.read_json(tmp_path / run / "model-last" / "meta.json")
        nlp = spacy.load(tmp_path / run / "model-last")
        scores.append((meta["performance"], [d.cats for d in nlp.pipe(["great", "awful value"])]))
    assert scores[0] == scores[1]


def test_empty_training_corpus_is_a_clear_error(tmp_path):
    from spacy.tokens import DocBin

    empty = tmp_path / "empty.spacy"
    DocBin().to_disk(empty)
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         "--output", str(tmp_path / "out"), "--paths.train", str(empty), "--paths.dev", str(empty), *SMALL],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    # spaCy's own textcat check: no labels can be found in an empty corpus.
    assert "E867" in out, out[-2000:]


def test_corrupt_spacy_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "train.spacy"
    bad.write_bytes(b"this is not a DocBin")
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         "--output", str(tmp_path / "out"), "--paths.train", str(bad), "--paths.dev", str(bad), *SMALL],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    # spacy-rnn.Corpus.v1 (the shipped configs' reader) names the file.
    out = result.stdout + result.stderr
    assert str(bad) in out and "not a DocBin" in out, out[-2000:]


def test_two_processes_match_one_with_torch_threads_in_use():
    # Forked workers used to hang once torch's OpenMP pool had run in the
    # parent (spacy_rnn/_fork.py). Run in a fresh interpreter with 2 torch
    # threads, and with a timeout, so a regression fails instead of hanging.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "multiprocess_check.py")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = srsly.json_loads(result.stdout.strip().splitlines()[-1])
    assert diffs["textcat_max_diff"] < 1e-6
    assert diffs["lm_max_diff"] < 1e-4


def test_hostile_text_sweep_language_model():
    from .test_language_model import make_lm, stream_corpus, train

    fix_random_seed(0)
    nlp, lm = make_lm()
    nlp.initialize(lambda: list(stream_corpus()(nlp)))
    train(nlp, epochs=2)
    batch = HOSTILE + HOSTILE[::-1]
    for doc in nlp.pipe(batch, batch_size=4):
        if len(doc) == 0:
            continue
        assert numpy.isfinite(doc._.lm_logprob), doc.text[:30]
        assert numpy.isfinite(doc._.lm_perplexity)
        assert all(numpy.isfinite(t._.lm_surprisal) for t in doc)

"""Every shipped config loads with validation, and the text classification
configs train end to end on the bundled fixture."""
import subprocess
import sys

import pytest
import spacy
from spacy.training import Corpus
from spacy.util import load_config, load_model_from_config

from spacy_rnn.cli.evaluate_lm import evaluate_lm_file

from .util import FIXTURES, ROOT

STREAM = FIXTURES / "stream_tiny.txt"

CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))


def test_configs_exist():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_validation(path):
    config = load_config(path)
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names


@pytest.mark.parametrize("name", ["textcat_bilstm.cfg", "textcat_gru.cfg", "textcat_bigru_attention.cfg"])
def test_textcat_config_trains_on_fixture(name, fixture_corpus, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / name),
         "--output", str(tmp_path),
         "--paths.train", str(fixture_corpus / "train.spacy"),
         "--paths.dev", str(fixture_corpus / "train.spacy"),
         "--training.max_steps", "6", "--training.eval_frequency", "3",
         "--components.textcat.model.tok2vec.embed.width", "32",
         "--components.textcat.model.tok2vec.encode.width", "32"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    nlp = spacy.load(tmp_path / "model-best")
    assert set(nlp("great value").cats) == {"positive", "negative"}
    # Scored on the training reviews it learnt from. Untrained, the output
    # layer starts at zero and every review scores alike (macro AUC 0.5);
    # the six steps rank them all right (1.0) with either config.
    scores = nlp.evaluate(list(Corpus(fixture_corpus / "train.spacy")(nlp)))
    assert scores["cats_macro_auc"] > 0.9


@pytest.fixture(scope="module")
def glove_vectors(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "glove"
    subprocess.run(
        [sys.executable, "-m", "spacy", "init", "vectors", "en",
         str(shared_data / "glove" / "glove.6B.50d.subset5k.txt"), str(out)],
        check=True, capture_output=True,
    )
    return out


def test_static_vectors_feed_the_encoder(fixture_corpus, glove_vectors, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "textcat_bilstm_vectors.cfg"),
         "--output", str(tmp_path), "--paths.vectors", str(glove_vectors),
         "--paths.train", str(fixture_corpus / "train.spacy"),
         "--paths.dev", str(fixture_corpus / "train.spacy"),
         "--training.max_steps", "4", "--training.eval_frequency", "2",
         "--components.textcat.model.tok2vec.embed.width", "32",
         "--components.textcat.model.tok2vec.encode.width", "32"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    nlp = spacy.load(tmp_path / "model-last")
    assert nlp.vocab.vectors.shape == (5050, 50)
    static = [n for n in nlp.get_pipe("textcat").model.walk() if n.name == "static_vectors"]
    assert static and static[0].get_param("W").shape[1] == 50
    # The vectors change the prediction: zeroing them changes the scores.
    before = nlp("the movie was good").cats
    nlp.vocab.vectors.data[:] = 0
    after = nlp("the movie was good").cats
    assert before != after


LM_CONFIGS = [p for p in CONFIGS if p.name.startswith("lm_")]


@pytest.mark.parametrize("path", LM_CONFIGS, ids=lambda p: p.name)
def test_lm_config_trains_on_fixture(path, tmp_path):
    """Every LM config, the GPU ones included, trains a few steps on CPU with
    its own settings except sizes (so a GPU config is known to run before
    anyone spends GPU time on it) and the learning rate of the Adam configs:
    four steps of their 100-500 step warmup to 0.001-0.003 move the
    perplexity by under 0.01, so here the rate is 0.1 after one step and
    decays over the four."""
    stream = tmp_path / "stream.spacy"
    subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-stream", str(STREAM), str(stream)],
        check=True, capture_output=True,
    )
    schedule = []
    if isinstance(load_config(path)["training"]["optimizer"]["learn_rate"], dict):
        schedule = ["--training.optimizer.learn_rate.warmup_steps", "1",
                    "--training.optimizer.learn_rate.initial_rate", "0.1"]
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(path), "--output", str(tmp_path / "out"),
         "--paths.train", str(stream), "--paths.dev", str(stream),
         "--training.max_steps", "4", "--training.eval_frequency", "2",
         "--components.lm.embed_width", "16", "--components.lm.hidden_width", "16",
         "--components.lm.vocab_size", "12000", *schedule],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Chance is 20 (the fixture's 20 word types); untrained, the configs
    # score 19.96-19.99. Four steps reach 15.2-16.1.
    assert evaluate_lm_file(tmp_path / "out" / "model-last", STREAM)["perplexity"] < 17.5

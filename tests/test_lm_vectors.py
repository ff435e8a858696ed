"""``rnn_lm`` with ``init_vectors = true``: the embedding starts from the
pipeline's word vectors (added by ``spacy init vectors``)."""
import subprocess
import sys

import numpy
import pytest
import spacy
from thinc.api import fix_random_seed

from spacy_rnn.corpus.token_stream import TokenStreamCorpus

from .util import FIXTURES, ROOT

STREAM = FIXTURES / "stream_tiny.txt"
TINY = {"vocab_size": 24, "hidden_width": 16, "depth": 1, "bptt": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def vectors_dir(shared_data, tmp_path_factory):
    glove = shared_data / "glove" / "glove.6B.50d.subset5k.txt"
    if not glove.exists():
        pytest.skip(f"{glove} not found")
    out = tmp_path_factory.mktemp("glove_pipeline")
    subprocess.run([sys.executable, "-m", "spacy", "init", "vectors", "en", str(glove), str(out)],
                   check=True, capture_output=True)
    return out


def _lm(nlp, **config):
    cfg = dict(TINY)
    cfg.update(config)
    lm = nlp.add_pipe("rnn_lm", config=cfg)
    nlp.initialize(lambda: TokenStreamCorpus(STREAM, n_streams=4, doc_length=8)(nlp))
    return lm


def test_embedding_rows_copied_from_vectors(vectors_dir, tmp_path):
    fix_random_seed(0)
    nlp = spacy.load(vectors_dir)
    lm = _lm(nlp, embed_width=50, init_vectors=True, tied=False)
    weight = lm.module.embed.weight.detach().numpy()
    # The word's own vector, else its lowercase form's (GloVe is lowercased:
    # PTB's "N" gets the row of "n").
    forms = {}
    for w in lm.words[2:]:
        form = next((f for f in (w, w.lower()) if nlp.vocab.has_vector(f)), None)
        if form is not None:
            forms[w] = form
    assert forms["N"] == "n" and forms["cat"] == "cat"
    with_vectors = list(forms)
    assert len(with_vectors) >= 10 and lm.cfg["vectors_rows"] == len(with_vectors)
    for word, form in forms.items():
        numpy.testing.assert_allclose(weight[lm.words.index(word)], nlp.vocab.get_vector(form))
    # Rows without a vector (the specials) keep the uniform(-0.1, 0.1) init.
    for i, word in enumerate(lm.words):
        if word not in with_vectors:
            assert numpy.abs(weight[i]).max() <= 0.1
    # The setting survives saving; loading does not re-initialise.
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p").get_pipe("rnn_lm")
    assert loaded.cfg["init_vectors"] is True
    numpy.testing.assert_array_equal(loaded.module.embed.weight.detach().numpy(), weight)


def test_tied_output_follows(vectors_dir):
    nlp = spacy.load(vectors_dir)
    lm = _lm(nlp, embed_width=50, init_vectors=True, tied=True)
    i = lm.words.index("cat")
    numpy.testing.assert_allclose(lm.module.out.weight.detach().numpy()[i], nlp.vocab.get_vector("cat"))


def test_width_mismatch_is_a_clear_error(vectors_dir):
    nlp = spacy.load(vectors_dir)
    with pytest.raises(ValueError, match="embed_width = 16.*width 50; set embed_width = 50"):
        _lm(nlp, embed_width=16, init_vectors=True)


def test_no_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="init_vectors = true but the pipeline has no word vectors"):
        _lm(spacy.blank("en"), embed_width=16, init_vectors=True)


def test_off_by_default_and_old_configs_load():
    nlp = spacy.blank("en")
    lm = _lm(nlp, embed_width=16)
    assert lm.cfg["init_vectors"] is False
    # A config written before the setting existed still loads.
    config = nlp.config.copy()
    del config["components"]["rnn_lm"]["init_vectors"]
    nlp2 = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp2.get_pipe("rnn_lm").cfg["init_vectors"] is False


def test_spacy_train_with_vectors(vectors_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "lm_ptb_cpu.cfg"),
         "--output", str(tmp_path), "--paths.train", str(STREAM), "--paths.dev", str(STREAM),
         "--paths.vectors", str(vectors_dir),
         "--training.max_steps", "4", "--training.eval_frequency", "2",
         "--components.lm.vocab_size", "20", "--components.lm.cutoffs", "[8, 14]",
         "--components.lm.embed_width", "50", "--components.lm.hidden_width", "16",
         "--components.lm.init_vectors", "true",
         "--corpora.train.n_streams", "4", "--training.batcher.size", "4"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "embedding rows initialised from the vectors" in result.stdout + result.stderr

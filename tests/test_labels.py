"""Gold labels that a text categoriser was not initialised with are an error
(spaCy's own textcat ignores them silently), in ``nlp.update`` and in
``spacy train``."""
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import load_config

from spacy_rnn.pipeline.textcat import (
    RNNMultiLabelTextCategorizer,
    RNNTextCategorizer,
    UnknownLabelError,
)

from .util import ROOT, blank_with_textcat

LONG_TEXT = "this one is about something else entirely, and it goes on and on"


def _initialised(factory, exclusive):
    nlp = blank_with_textcat(factory=factory, exclusive=exclusive)
    examples = [
        Example.from_dict(nlp.make_doc("works great"), {"cats": {"POS": 1.0, "NEG": 0.0}}),
        Example.from_dict(nlp.make_doc("broke in a day"), {"cats": {"POS": 0.0, "NEG": 1.0}}),
    ]
    optimizer = nlp.initialize(lambda: examples)
    return nlp, examples, optimizer


@pytest.mark.parametrize(
    "factory,exclusive,cls",
    [("rnn_textcat", True, RNNTextCategorizer),
     ("rnn_textcat_multilabel", False, RNNMultiLabelTextCategorizer)],
)
def test_update_with_unknown_label_names_label_and_doc(factory, exclusive, cls):
    nlp, examples, optimizer = _initialised(factory, exclusive)
    textcat = nlp.get_pipe(nlp.pipe_names[0])
    assert isinstance(textcat, cls)
    nlp.update(examples, sgd=optimizer)  # known labels: fine
    bad = Example.from_dict(
        nlp.make_doc(LONG_TEXT), {"cats": {"POS": 0.0, "NEG": 0.0, "OTHER": 1.0}}
    )
    with pytest.raises(ValueError) as info:
        nlp.update(examples + [bad], sgd=optimizer)
    message = str(info.value)
    assert isinstance(info.value, UnknownLabelError)
    assert "'OTHER'" in message
    assert "'POS'" in message and "'NEG'" in message
    assert "doc 2 in the batch" in message
    assert repr(LONG_TEXT[:50] + "...") in message
    assert "before initialize" in message and "training data" in message
    # get_loss checks too, for callers that drive the loss themselves.
    scores = textcat.predict([eg.predicted for eg in [bad]])
    with pytest.raises(UnknownLabelError, match="OTHER"):
        textcat.get_loss([bad], scores)


def test_unknown_label_in_empty_doc_is_still_an_error():
    nlp, examples, optimizer = _initialised("rnn_textcat", True)
    bad = Example.from_dict(nlp.make_doc(""), {"cats": {"POS": 1.0, "NEG": 0.0, "X": 0.0}})
    with pytest.raises(UnknownLabelError, match="doc 0 in the batch"):
        nlp.update([bad], sgd=optimizer)


def test_missing_known_label_is_fine_for_multilabel():
    nlp, examples, optimizer = _initialised("rnn_textcat_multilabel", False)
    partial = Example.from_dict(nlp.make_doc("meh"), {"cats": {"POS": 1.0}})
    losses = nlp.update(examples + [partial], sgd=optimizer)
    assert nlp.pipe_names[0] in losses


def test_added_label_before_initialize_is_known():
    nlp = blank_with_textcat()
    textcat = nlp.get_pipe(nlp.pipe_names[0])
    for label in ("POS", "NEG", "OTHER"):
        textcat.add_label(label)
    examples = [
        Example.from_dict(nlp.make_doc("works great"), {"cats": {"POS": 1.0, "NEG": 0.0, "OTHER": 0.0}}),
        Example.from_dict(nlp.make_doc("so so"), {"cats": {"POS": 0.0, "NEG": 0.0, "OTHER": 1.0}}),
    ]
    # The data initialize reads never names OTHER: only add_label makes it known.
    seen = [Example.from_dict(nlp.make_doc("works great"), {"cats": {"POS": 1.0, "NEG": 0.0}})]
    optimizer = nlp.initialize(lambda: seen)
    assert textcat.labels == ("POS", "NEG", "OTHER")
    losses = nlp.update(examples, sgd=optimizer)
    # The zero-initialised output layer starts uniform over the three labels:
    # mean squared error ((1 - 1/3)^2 + 2 * (1/3)^2) / 3 = 2/9 (measured 0.2222).
    assert losses[nlp.pipe_names[0]] == pytest.approx(2 / 9, rel=1e-4)


def test_round_trip_keeps_the_subclass(tmp_path):
    nlp, examples, optimizer = _initialised("rnn_textcat", True)
    # Trained a little: the zero-initialised output layer predicts exactly
    # 0.5 for everything, which any reload would reproduce.
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    texts = ["works great", "broke in a day", LONG_TEXT]
    before = [nlp(t).cats for t in texts]
    assert abs(before[0]["POS"] - 0.5) > 1e-3, before
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert isinstance(loaded.get_pipe(loaded.pipe_names[0]), RNNTextCategorizer)
    assert loaded.get_pipe(loaded.pipe_names[0]).labels == ("POS", "NEG")
    for text, cats in zip(texts, before):
        assert loaded(text).cats == pytest.approx(cats, abs=1e-6), text


def test_spacy_train_fails_on_unknown_label(tmp_path):
    nlp = spacy.blank("en")
    db = DocBin()
    texts = ["great value", "awful, broke", "fine I guess", "loved it", "never again"]
    labels = ["positive", "negative", "neutral", "positive", "negative"]
    for text, label in zip(texts, labels):
        doc = nlp.make_doc(text)
        names = ("positive", "negative") + (("neutral",) if label == "neutral" else ())
        doc.cats = {lab: float(lab == label) for lab in names}
        db.add(doc)
    db.to_disk(tmp_path / "train.spacy")
    # Labels fixed up front (as `spacy init labels` or a hand-written list
    # would), so "neutral" only appears in the training data.
    config = load_config(ROOT / "configs" / "textcat_bilstm.cfg")
    config["initialize"]["components"]["textcat"] = {"labels": ["positive", "negative"]}
    config.to_disk(tmp_path / "config.cfg")
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(tmp_path / "config.cfg"),
         "--output", str(tmp_path / "out"),
         "--paths.train", str(tmp_path / "train.spacy"),
         "--paths.dev", str(tmp_path / "train.spacy"),
         "--training.max_steps", "4", "--training.eval_frequency", "2",
         "--components.textcat.model.tok2vec.embed.width", "32",
         "--components.textcat.model.tok2vec.encode.width", "32"],
        capture_output=True, text=True,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "'neutral'" in out and "not initialised with" in out, out[-3000:]
    assert "fine I guess" in out, out[-3000:]

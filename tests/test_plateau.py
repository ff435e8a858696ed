import subprocess
import sys

import pytest
import srsly

from spacy_rnn.optimization.plateau import PlateauController, plateau_monitor, plateau_schedule

from .util import ROOT


def test_controller_reduces_after_patience_and_respects_floor():
    c = PlateauController(1.0, factor=0.5, patience=1, min_rate=0.2, threshold=0.0)
    for score in [0.5, 0.6, 0.6, 0.6]:
        c.observe(score)
    assert c.rate == 0.5 and c.reductions == 1
    for score in [0.6] * 10:
        c.observe(score)
    assert c.rate == 0.2
    c.observe(0.9)
    assert c.best == 0.9 and c.bad_evals == 0


def test_schedule_follows_its_monitor():
    import spacy

    schedule = plateau_schedule(0.01, factor=0.1, patience=0, key="unit")
    monitor = plateau_monitor(key="unit")
    nlp = spacy.blank("en")
    nlp.config["training"]["score_weights"] = {"cats_score": 1.0}
    assert next(schedule) == 0.01
    for score in (0.5, 0.4):
        nlp.meta["performance"] = {"cats_score": score}
        monitor(nlp, {"step": 0, "epoch": 0})
        monitor(nlp, {"step": 1, "epoch": 0})  # same evaluation: counted once
    assert next(schedule) == pytest.approx(0.001)


def test_monitor_without_schedule_is_a_clear_error():
    import spacy

    nlp = spacy.blank("en")
    nlp.meta["performance"] = {"cats_score": 0.1}
    with pytest.raises(ValueError, match="no spacy_rnn.plateau.v1 schedule"):
        plateau_monitor(key="missing")(nlp, {"step": 0, "epoch": 0})


@pytest.mark.parametrize("kwargs,message", [({"factor": 1.5}, "factor"), ({"patience": -1}, "patience")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plateau_schedule(0.01, **kwargs)


def test_learn_rate_drops_inside_spacy_train(fixture_corpus, tmp_path):
    corpus = fixture_corpus
    # An impossible improvement threshold makes every evaluation a plateau.
    script = f"""
import json, spacy_rnn
from spacy.cli.train import train
from spacy_rnn.optimization.plateau import get_controller
train({str(ROOT / 'configs' / 'textcat_bilstm.cfg')!r}, {str(tmp_path / 'out')!r}, overrides={{
    "paths.train": {str(corpus / 'train.spacy')!r}, "paths.dev": {str(corpus / 'train.spacy')!r},
    "training.max_steps": 9, "training.eval_frequency": 2,
    "components.textcat.model.tok2vec.embed.width": 16,
    "components.textcat.model.tok2vec.encode.width": 16,
    "training.optimizer.learn_rate": {{"@schedules": "spacy_rnn.plateau.v1", "base_rate": 0.01,
        "factor": 0.5, "patience": 0, "threshold": 10.0, "key": "it"}},
    "training.before_update": {{"@callbacks": "spacy_rnn.plateau_monitor.v1", "key": "it"}},
}})
c = get_controller("it")
print(json.dumps({{"rate": c.rate, "reductions": c.reductions}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = srsly.json_loads(out.stdout.strip().splitlines()[-1])
    # Evaluations at steps 0, 2, 4, 6, 8: the first sets the best, the
    # monitor sees the rest before the following updates.
    assert result["reductions"] >= 3
    assert result["rate"] == pytest.approx(0.01 * 0.5 ** result["reductions"])

"""NT-ASGD (spacy_rnn.NTASGD.v1 + spacy_rnn.ntasgd_monitor.v1): the
non-monotone trigger, averaged weights at evaluation, and spacy train."""
import subprocess
import sys

import numpy
import pytest
import spacy
import srsly
import torch
from thinc.api import fix_random_seed
from spacy.util import registry

from spacy_rnn.corpus.token_stream import TokenStreamCorpus
from spacy_rnn.optimization.ntasgd import NTASGD, get_ntasgd, make_ntasgd, ntasgd_monitor

from .util import FIXTURES, ROOT

STREAM = FIXTURES / "stream_tiny.txt"
TINY = {"vocab_size": 24, "embed_width": 16, "hidden_width": 24, "depth": 1,
        "bptt": 8, "dropout": 0.0, "tied": True}


def test_registered():
    assert registry.optimizers.get("spacy_rnn.NTASGD.v1") is make_ntasgd
    assert registry.callbacks.get("spacy_rnn.ntasgd_monitor.v1") is ntasgd_monitor


@pytest.mark.parametrize("nonmono", [0, 1, 2, 3])
def test_trigger_after_nonmono_non_improving_evaluations(nonmono):
    # The first score is the best; every later one is worse. The criterion
    # compares with the scores logged more than `nonmono` evaluations before,
    # so it fires at evaluation index nonmono + 1 (0-based), not earlier.
    opt = NTASGD(1.0, nonmono=nonmono)
    fired = [opt.observe(s) for s in [0.5] + [0.4] * (nonmono + 3)]
    assert fired.index(True) == nonmono + 1
    assert sum(fired) == 1 and opt.triggered_at == nonmono + 1


def test_no_trigger_while_improving_and_non_monotone_tolerance():
    opt = NTASGD(1.0, nonmono=2)
    # Improving: never fires.
    assert not any(opt.observe(s) for s in [0.1, 0.2, 0.3, 0.4, 0.5])
    assert opt.averages is None
    # A dip that stays above the best of the scores more than 2 evaluations
    # old (0.3) is tolerated; falling below it fires.
    assert not opt.observe(0.45)
    assert not opt.observe(0.41)
    assert opt.observe(0.39)
    assert opt.averages == {}


def test_monitor_feeds_each_evaluation_once():
    make_ntasgd(learn_rate=1.0, nonmono=0, key="unit")
    monitor = ntasgd_monitor(key="unit")
    nlp = spacy.blank("en")
    nlp.config["training"]["score_weights"] = {"lm_score": 1.0}
    for score in (0.5, 0.4):
        nlp.meta["performance"] = {"lm_score": score}
        monitor(nlp, {"step": 0, "epoch": 0})
        monitor(nlp, {"step": 1, "epoch": 0})  # same evaluation: counted once
    opt = get_ntasgd("unit")
    assert opt.logs == [0.5, 0.4] and opt.triggered_at == 1
    with pytest.raises(ValueError, match="no spacy_rnn.NTASGD.v1 optimizer"):
        nlp.meta["performance"] = {"lm_score": 0.1}
        ntasgd_monitor(key="missing")(nlp, {"step": 0, "epoch": 0})


def test_sgd_step_before_trigger_is_plain_sgd():
    opt = NTASGD(0.5, nonmono=1)
    w = numpy.ones((3,), dtype="float32")
    g = numpy.full((3,), 2.0, dtype="float32")
    w2, _ = opt((1, "x.weight"), w, g)
    numpy.testing.assert_allclose(w2, 0.0)
    assert opt.averages is None


def test_evaluation_uses_the_average_after_the_trigger():
    fix_random_seed(0)
    nlp = spacy.blank("en")
    lm = nlp.add_pipe("rnn_lm", config=TINY)
    corpus = TokenStreamCorpus(STREAM, n_streams=4, doc_length=8)
    nlp.initialize(lambda: corpus(nlp))
    dev = list(TokenStreamCorpus(STREAM, n_streams=2, doc_length=0)(nlp))
    examples = list(corpus(nlp))
    opt = NTASGD(0.5, nonmono=0)
    params = dict(lm.module.named_parameters())

    # Two SGD steps, then a worse score fires the trigger.
    for i in range(2):
        nlp.update(examples[i * 4 : i * 4 + 4], sgd=opt)
    assert opt.averages is None
    opt.observe(0.5)
    assert opt.observe(0.4) and opt.averages == {}
    iterates = {name: [] for name in params}
    for i in range(2, 6):
        nlp.update(examples[i * 4 : i * 4 + 4], sgd=opt)
        for name, p in params.items():
            iterates[name].append(p.detach().clone())
    expected = {name: torch.stack(v).mean(0) for name, v in iterates.items()}
    raw = {name: p.detach().clone() for name, p in params.items()}
    assert not torch.allclose(expected["embed.weight"], raw["embed.weight"])
    raw_score = nlp.evaluate(dev)["lm_ppl"]

    with nlp.use_params(opt.averages):
        for name, p in params.items():
            torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)
        avg_score = nlp.evaluate(dev)["lm_ppl"]
    # Restored afterwards.
    for name, p in params.items():
        assert torch.equal(p.detach(), raw[name])

    # The averaged score is the score of a model that holds the mean weights.
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(expected[name])
    assert nlp.evaluate(dev)["lm_ppl"] == pytest.approx(avg_score, rel=1e-5)
    assert avg_score != pytest.approx(raw_score, rel=1e-6)


@pytest.mark.parametrize("component", ["rnn_lm", "rnn_textcat"])
def test_adam_averages_are_swapped_into_torch_weights(component):
    """With Thinc's Adam and ``use_averages = true``, spaCy evaluates and saves
    inside ``nlp.use_params(optimizer.averages)``: the recurrent weights must be
    averaged there like the Thinc layers (they once stayed raw)."""
    from thinc.api import Adam

    from .util import blank_with_textcat, fixture_examples

    fix_random_seed(0)
    if component == "rnn_lm":
        nlp = spacy.blank("en")
        nlp.add_pipe("rnn_lm", config=TINY)
        corpus = TokenStreamCorpus(STREAM, n_streams=4, doc_length=8)
        examples = list(corpus(nlp))[:4]
        nlp.initialize(lambda: corpus(nlp))
    else:
        nlp = blank_with_textcat()
        examples = fixture_examples(nlp)
        nlp.initialize(lambda: examples)
    (shim,) = [s for node in nlp.get_pipe(component).model.walk() for s in node.shims]
    opt = Adam(0.01, use_averages=True)
    for _ in range(3):
        nlp.update(examples, sgd=opt)
    raw = {n: p.detach().clone() for n, p in shim._model.named_parameters()}
    with nlp.use_params(opt.averages):
        for name, param in shim._model.named_parameters():
            average = torch.as_tensor(opt.averages[(shim.id, name)]).reshape(param.shape)
            assert torch.equal(param.detach(), average), name
            assert not torch.equal(param.detach(), raw[name]), name
    for name, param in shim._model.named_parameters():
        assert torch.equal(param.detach(), raw[name]), name


def test_spacy_train_with_ntasgd(tmp_path):
    """The shipped CPU LM config with NT-ASGD and its monitor: training runs,
    averaging starts, and model-last holds the averaged weights."""
    script = f"""
import json, spacy, spacy_rnn, torch
from pathlib import Path
from spacy.training.initialize import init_nlp
from spacy.training.loop import train
from spacy.util import load_config
from spacy_rnn.optimization.ntasgd import get_ntasgd
config = load_config({str(ROOT / 'configs' / 'lm_ptb_cpu.cfg')!r}, interpolate=False, overrides={{
    "paths.train": {str(STREAM)!r}, "paths.dev": {str(STREAM)!r},
    "training.max_steps": 16, "training.eval_frequency": 2,
    "components.lm.vocab_size": 20, "components.lm.cutoffs": [8, 14],
    "components.lm.embed_width": 16, "components.lm.hidden_width": 16,
    "corpora.train.n_streams": 4, "training.batcher.size": 4,
    "training.optimizer": {{"@optimizers": "spacy_rnn.NTASGD.v1", "learn_rate": 1.0,
        "nonmono": 0, "trigger_at": 2, "key": "it"}},
    "training.before_update": {{"@callbacks": "spacy_rnn.ntasgd_monitor.v1", "key": "it"}},
}})
Path({str(tmp_path / 'out')!r}).mkdir()
nlp, _ = train(init_nlp(config), Path({str(tmp_path / 'out')!r}))
opt = get_ntasgd("it")
lm = nlp.get_pipe("lm")
saved = spacy.load({str(tmp_path / 'out' / 'model-last')!r}).get_pipe("lm")
with nlp.use_params(opt.averages):
    same = all(torch.equal(a, b) for a, b in zip(lm.module.state_dict().values(), saved.module.state_dict().values()))
raw_differs = not torch.equal(lm.module.embed.weight, saved.module.embed.weight)
print(json.dumps({{"triggered_at": opt.triggered_at, "n_logs": len(opt.logs),
                   "saved_is_average": same, "raw_differs": raw_differs}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = srsly.json_loads(out.stdout.strip().splitlines()[-1])
    assert result["triggered_at"] == 2
    assert result["n_logs"] >= 8
    assert result["saved_is_average"] and result["raw_differs"]


def test_text_classifier_evaluates_with_averages_too():
    # The textcat's torch encoder goes through Thinc's PyTorchShim.use_params
    # (shim-format keys, complete state dict); its Thinc layers through the
    # (id, name) keys.
    from .util import blank_with_textcat, fixture_examples

    fix_random_seed(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    opt = NTASGD(0.5, nonmono=0)
    opt.start_averaging()
    textcat = nlp.get_pipe("textcat") if "textcat" in nlp.pipe_names else nlp.pipeline[-1][1]
    shims = [s for node in textcat.model.walk() for s in node.shims]
    assert shims
    module = shims[0]._model
    iterates = []
    for _ in range(3):
        nlp.update(examples, sgd=opt)
        iterates.append({n: p.detach().clone() for n, p in module.named_parameters()})
    raw = {n: p.detach().clone() for n, p in module.named_parameters()}
    with nlp.use_params(opt.averages):
        for name, p in module.named_parameters():
            mean = torch.stack([it[name] for it in iterates]).mean(0)
            torch.testing.assert_close(p.detach(), mean, rtol=1e-5, atol=1e-6)
    for name, p in module.named_parameters():
        assert torch.equal(p.detach(), raw[name])

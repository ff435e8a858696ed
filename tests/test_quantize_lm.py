"""``python -m spacy_rnn quantize`` on a pipeline with an ``rnn_lm``."""
import json
import subprocess
import sys

import pytest
import spacy
from safetensors.torch import load as safetensors_load
from thinc.api import fix_random_seed
import torch
from torch import nn

from spacy_rnn.compression.quantize import quantize_and_report, quantize_pipeline

from .test_language_model import STREAM, make_lm, stream_corpus, train

TEXTS = ["the cat sat on the mat", "a dog ran home", "zebra unknown words here"]


def _trained_lm_dir(path, epochs=20, **overrides):
    fix_random_seed(0)
    nlp, lm = make_lm(**overrides)
    nlp.initialize(lambda: stream_corpus()(nlp))
    train(nlp, epochs)
    nlp.to_disk(path)
    return path


def _quantized_modules(module):
    return [m for m in module.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]


@pytest.fixture(scope="module")
def float_and_int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_int8")
    # tied with a projection (hidden 24 != embed 16): every Linear kind
    _trained_lm_dir(root / "float", tied=True)
    report = quantize_and_report(root / "float", root / "int8", STREAM, min_seconds=0.1)
    return root, report


def test_int8_lm_scores_like_the_float_one(float_and_int8):
    root, report = float_and_int8
    before, after = spacy.load(root / "float"), spacy.load(root / "int8")
    lm = after.get_pipe("rnn_lm")
    assert lm.cfg["int8"] is True
    quantized = _quantized_modules(lm.module)
    # fwd LSTM cell, projection and output layer
    assert len([m for m in quantized if "LSTM" in type(m).__name__]) == 1
    assert len([m for m in quantized if "Linear" in type(m).__name__ and "Packed" not in type(m).__name__]) == 2
    assert isinstance(lm.module.embed, nn.Embedding)
    for a, b in zip(before.pipe(TEXTS), after.pipe(TEXTS)):
        assert b._.lm_logprob == pytest.approx(a._.lm_logprob, rel=0.05, abs=0.5)
        assert len(b._.lm_surprisals) == len(a._.lm_surprisals)
    ppl = report["perplexity"]
    assert report["eval_tokens"] == 318
    assert ppl["after"] == pytest.approx(ppl["before"], rel=0.05)
    assert report["speed_tokens_per_s"]["after"] > 0
    assert report["components_quantized"] == 1


def test_int8_lm_weights_are_int8_safetensors_and_resave_exactly(float_and_int8, tmp_path):
    from spacy_rnn.serialization import _looks_like_pickle

    from .test_compression import _shim_blobs

    root, _ = float_and_int8
    (blob,) = _shim_blobs(root / "int8" / "rnn_lm")
    assert not _looks_like_pickle(blob)
    state = safetensors_load(blob)
    int8_keys = [k for k in state if k.endswith(".int8")]
    assert {"fwd.fwd.0.weight_ih_l0.int8", "fwd.fwd.0.weight_hh_l0.int8", "out.int8", "proj.int8"} <= set(int8_keys)
    assert all(str(state[k].dtype) == "torch.int8" for k in int8_keys)
    assert "embed.weight" in state and "out.weight" not in state
    nlp = spacy.load(root / "int8")
    first = [d._.lm_logprob for d in nlp.pipe(TEXTS)]
    nlp.to_disk(tmp_path / "again")
    # Same tensors, to the bit (safetensors may order its header differently).
    resaved = safetensors_load(_shim_blobs(tmp_path / "again" / "rnn_lm")[0])
    assert sorted(resaved) == sorted(state)
    assert all(torch.equal(resaved[k], state[k]) for k in state)
    again = spacy.load(tmp_path / "again")
    assert [d._.lm_logprob for d in again.pipe(TEXTS)] == first
    from spacy_rnn.compression.int8_lm import int8_state

    # Bytes round trip as well.
    again.get_pipe("rnn_lm").from_bytes(nlp.get_pipe("rnn_lm").to_bytes())
    assert sorted(int8_state(again.get_pipe("rnn_lm").module)) == sorted(state)


def test_int8_lm_refuses_training(float_and_int8):
    root, _ = float_and_int8
    nlp = spacy.load(root / "int8")
    examples = list(stream_corpus()(nlp))[:2]
    with pytest.raises(ValueError, match="inference only"):
        nlp.update(examples)


@pytest.mark.parametrize(
    "overrides,n_cells,n_linears",
    [
        ({"cell": "gru", "bidirectional": True, "depth": 2}, 4, 1),
        # No int8 kernel for plain RNN cells: they stay float, the output layer doesn't.
        ({"cell": "rnn_tanh"}, 0, 1),
        # Adaptive softmax: its head and the tail cluster's two layers.
        ({"softmax": "adaptive", "cutoffs": [8], "vocab_size": 24}, 1, 3),
    ],
)
def test_int8_variants(tmp_path, overrides, n_cells, n_linears):
    _trained_lm_dir(tmp_path / "float", epochs=3, **overrides)
    nlp, n = quantize_pipeline(tmp_path / "float", tmp_path / "int8")
    assert n == 1
    module = nlp.get_pipe("rnn_lm").module
    quantized = _quantized_modules(module)
    names = [type(m).__name__ for m in quantized]
    assert sum(name in ("LSTM", "GRU") for name in names) == n_cells
    assert sum(name == "Linear" for name in names) == n_linears
    before = spacy.load(tmp_path / "float")
    for a, b in zip(before.pipe(TEXTS), nlp.pipe(TEXTS)):
        assert b._.lm_logprob == pytest.approx(a._.lm_logprob, rel=0.1, abs=1.0)
    if overrides.get("bidirectional"):
        assert all(d._.lm_backward_logprob is not None for d in nlp.pipe(TEXTS))


def test_quantize_cli_reports_perplexity(float_and_int8, tmp_path):
    root, _ = float_and_int8
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "quantize", str(root / "float"), str(tmp_path / "q"),
         "--eval-data", str(STREAM), "--min-seconds", "0.1"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    ppl = report["perplexity"]
    # Measured 1.917 before, 1.916 after; guessing among the 20 words is 20.
    assert ppl["before"] < 3, ppl
    assert ppl["after"] == pytest.approx(ppl["before"], rel=0.05), ppl
    assert ppl["change"] == pytest.approx(ppl["after"] - ppl["before"])
    assert report["size_bytes"]["after"] < report["size_bytes"]["before"]
    assert spacy.load(tmp_path / "q").get_pipe("rnn_lm").cfg["int8"] is True


def test_int8_lm_cannot_initialise_an_encoder(tmp_path):
    from .test_language_model import _save_bidirectional_lm, _textcat_with_transfer
    from .util import fixture_examples

    _save_bidirectional_lm(tmp_path / "lm")
    quantize_pipeline(tmp_path / "lm", tmp_path / "lm_int8")
    nlp = _textcat_with_transfer(tmp_path / "lm_int8")
    with pytest.raises(ValueError, match="int8 weights"):
        nlp.initialize(lambda: fixture_examples(nlp))

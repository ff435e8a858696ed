"""The ``rnn_lm`` component: learning, truncated BPTT, serialisation,
generation, the no-peeking property of the bidirectional model, transfer to
a text classifier, and bad input."""
import copy
import json
import math
import subprocess
import sys

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Adam, fix_random_seed

from spacy_rnn.callbacks import find_rnn_encoders
from spacy_rnn.corpus.token_stream import STREAM_KEY, TokenStreamCorpus

from .util import FIXTURES, ROOT, fixture_examples, small_textcat_config

TINY = {
    "vocab_size": 24,
    "embed_width": 16,
    "hidden_width": 24,
    "depth": 1,
    "bptt": 8,
    "dropout": 0.0,
    "tied": False,
}
STREAM = FIXTURES / "stream_tiny.txt"


def make_lm(**overrides):
    nlp = spacy.blank("en")
    config = dict(TINY)
    config.update(overrides)
    lm = nlp.add_pipe("rnn_lm", config=config)
    return nlp, lm


def stream_corpus(n_streams=4, doc_length=8):
    return TokenStreamCorpus(STREAM, n_streams=n_streams, doc_length=doc_length)


def dev_examples(nlp):
    return list(TokenStreamCorpus(STREAM, n_streams=2, doc_length=0)(nlp))


def train_batches(nlp, epochs, optimizer, n_streams=4, after_update=None):
    """Stream batches in order for ``epochs``; each batch's loss, by epoch.
    ``after_update`` (if given) is called after every update."""
    corpus = stream_corpus(n_streams=n_streams)
    per_epoch = []
    for _ in range(epochs):
        examples = list(corpus(nlp))
        batch_losses = []
        for i in range(0, len(examples), n_streams):
            losses = {}
            nlp.update(examples[i : i + n_streams], sgd=optimizer, losses=losses)
            batch_losses.append(losses["rnn_lm"])
            if after_update is not None:
                after_update()
        per_epoch.append(batch_losses)
    return per_epoch


def train(nlp, epochs, n_streams=4, lr=0.01):
    return [sum(batches) for batches in train_batches(nlp, epochs, Adam(lr), n_streams)]


@pytest.fixture(scope="module")
def trained():
    fix_random_seed(0)
    nlp, lm = make_lm()
    nlp.initialize(lambda: stream_corpus()(nlp))
    before = nlp.evaluate(dev_examples(nlp))
    history = train(nlp, 40)
    return nlp, lm, before, history


def test_vocabulary_built_from_corpus(trained):
    nlp, lm, _, _ = trained
    assert lm.words[:2] == ["<unk>", "<eos>"]
    assert lm.words[2] == "the"  # the most frequent word
    assert lm.cfg["n_words"] == len(lm.words) == 20
    assert int(lm.module.n_active) == 20


def test_loss_falls_and_tiny_stream_is_memorised(trained):
    nlp, lm, before, history = trained
    assert history[-1] < history[0] / 3
    after = nlp.evaluate(dev_examples(nlp))
    assert before["lm_ppl"] > 15
    # The fixture repeats a 7-line cycle: a model that memorised it is
    # nearly certain of every token.
    assert after["lm_ppl"] < 1.6
    assert after["lm_score"] == pytest.approx(1 / after["lm_ppl"])
    assert after["lm_loss"] == pytest.approx(math.log(after["lm_ppl"]))


def test_masked_rows_are_never_predicted(trained):
    nlp, lm, _, _ = trained
    dist = lm.predict_distributions(nlp.make_doc("the cat sat"))
    assert dist.shape == (3, 24)
    assert numpy.all(numpy.isneginf(dist[:, 20:]))
    assert numpy.allclose(numpy.exp(dist).sum(axis=1), 1.0, atol=1e-5)


def test_vocabulary_size_survives_loading_weights(trained):
    # The module keeps a host copy of its vocabulary count so that no
    # softmax has to read the buffer back from a GPU; loading a state dict
    # must refresh it, or the unused rows would stop being masked.
    nlp, lm, _, _ = trained
    fresh = copy.deepcopy(lm.module)
    fresh.set_n_active(fresh.vocab_size)
    assert fresh.n_words == fresh.vocab_size
    fresh.load_state_dict(lm.module.state_dict())
    assert fresh.n_words == lm.module.n_words == 20
    H = torch.randn(3, lm.module.out.in_features)
    assert torch.isneginf(fresh.log_probs(H)[:, 20:]).all()


def test_annotations_are_consistent(trained):
    nlp, lm, _, _ = trained
    doc = nlp("the cat sat on the mat")
    surprisals = [t._.lm_surprisal for t in doc]
    assert all(s >= 0 for s in surprisals)
    assert sum(surprisals) == pytest.approx(-doc._.lm_logprob, rel=1e-5)
    assert doc._.lm_perplexity == pytest.approx(math.exp(-doc._.lm_logprob / len(doc)))
    # Row i of the forward distributions is what token i was scored with.
    dist = lm.predict_distributions(doc)
    ids = lm.doc_ids(doc)
    assert numpy.allclose(-dist[numpy.arange(len(doc)), ids], surprisals, atol=1e-5)


def test_windows_do_not_change_predictions(trained):
    # State is carried across bptt windows, so the window length must not
    # change any score (only where gradients are cut).
    nlp, lm, _, _ = trained
    words = STREAM.read_text().split()[:60]
    doc = Doc(nlp.vocab, words=words)
    ref = lm.predict([doc])["fwd"][0]
    old = lm.cfg["bptt"]
    try:
        for bptt in (1, 7, 100):
            lm.cfg["bptt"] = bptt
            assert numpy.allclose(lm.predict([doc])["fwd"][0], ref, atol=1e-5)
    finally:
        lm.cfg["bptt"] = old
    # Batched with shorter docs (padding) the scores stay the same too.
    short = Doc(nlp.vocab, words=words[:5])
    batched = lm.predict([short, doc, Doc(nlp.vocab, words=[])])["fwd"]
    assert numpy.allclose(batched[1], ref, atol=1e-5)
    assert len(batched[2]) == 0


def test_stream_state_carried_only_across_consecutive_chunks(trained):
    nlp, lm, _, _ = trained
    examples = list(stream_corpus(n_streams=4)(nlp))
    first, second, third = examples[0:4], examples[4:8], examples[8:12]
    assert [eg.predicted.user_data[STREAM_KEY] for eg in second] == [[c, 1] for c in range(4)]
    lm.update(first)
    state, last = lm._continued_state([eg.predicted for eg in second], None)
    assert state is not None
    assert last == [int(lm.doc_ids(eg.predicted)[-1]) for eg in first]
    # Out of order (e.g. shuffled by spaCy): no state is carried.
    assert lm._continued_state([eg.predicted for eg in third], None) == (None, None)
    lm.update(second)
    assert lm._stream_state["chunk"] == 1


def test_generate_is_reproducible(trained):
    nlp, lm, _, _ = trained
    a = lm.generate("the cat", n_tokens=15, temperature=1.0, seed=3)
    b = lm.generate("the cat", n_tokens=15, temperature=1.0, seed=3)
    assert a == b and len(a) == 15
    assert all(w in lm.words for w in a)
    runs = {tuple(lm.generate("the", n_tokens=15, temperature=2.0, seed=s)) for s in range(5)}
    assert len(runs) > 1
    # top_k = 1 is greedy: the same for any seed; memorised text continues.
    greedy = lm.generate("the cat sat on the", n_tokens=2, top_k=1, seed=1)
    assert greedy == lm.generate("the cat sat on the", n_tokens=2, top_k=1, seed=99)
    assert greedy == ["mat", "<eos>"]
    with pytest.raises(ValueError):
        lm.generate("the", temperature=0)


def test_unknown_words_empty_docs_and_long_docs(trained):
    nlp, lm, _, _ = trained
    doc = nlp("zebra quagga the cat")
    assert list(lm.doc_ids(doc)[:2]) == [0, 0]
    assert math.isfinite(doc._.lm_logprob)
    empty = nlp("")
    assert empty._.lm_logprob == 0.0 and empty._.lm_perplexity is None
    assert empty._.lm_surprisals == []
    long_doc = Doc(nlp.vocab, words=STREAM.read_text().split() * 3)
    assert len(long_doc) > 20 * lm.cfg["bptt"]
    nlp.get_pipe("rnn_lm")(long_doc)
    assert len(long_doc._.lm_surprisals) == len(long_doc)
    # update copes with empty docs alone and mixed with others
    losses = lm.update([Example(nlp.make_doc(""), nlp.make_doc(""))])
    assert losses["rnn_lm"] == 0.0
    lm.update([Example(nlp.make_doc(""), nlp.make_doc("")), Example(long_doc, long_doc)])
    scores = nlp.evaluate([Example(nlp.make_doc(""), nlp.make_doc(""))])
    assert scores["lm_ppl"] is None


def _assert_same_scores(nlp_a, nlp_b):
    texts = ["the cat sat on the mat", "a dog played", "unknown words here"]
    for doc_a, doc_b in zip(nlp_a.pipe(texts), nlp_b.pipe(texts)):
        assert doc_a._.lm_logprob == pytest.approx(doc_b._.lm_logprob, abs=1e-6)
    assert nlp_a.evaluate(dev_examples(nlp_a))["lm_ppl"] == pytest.approx(
        nlp_b.evaluate(dev_examples(nlp_b))["lm_ppl"], rel=1e-6
    )


@pytest.mark.parametrize("initialized", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_serialization_round_trips(tmp_path, initialized, bidirectional):
    fix_random_seed(1)
    nlp, lm = make_lm(bidirectional=bidirectional)
    if initialized:
        nlp.initialize(lambda: stream_corpus()(nlp))
        train(nlp, 1)
    nlp2, _ = make_lm(bidirectional=bidirectional)
    nlp2.from_bytes(nlp.to_bytes())
    _assert_same_scores(nlp, nlp2)
    assert nlp2.get_pipe("rnn_lm").words == lm.words
    nlp.to_disk(tmp_path / "lm")
    nlp3 = spacy.load(tmp_path / "lm")
    _assert_same_scores(nlp, nlp3)
    assert nlp3.get_pipe("rnn_lm").words == lm.words
    # The weights are stored as safetensors, never as a pickle.
    assert (tmp_path / "lm" / "rnn_lm" / "model").read_bytes()[:1] != b"\x80"


def test_loading_into_a_differently_configured_component_fails():
    nlp, _ = make_lm()
    other, _ = make_lm(hidden_width=32)
    with pytest.raises(ValueError, match="hidden_width"):
        other.from_bytes(nlp.to_bytes())


@pytest.mark.parametrize(
    "overrides",
    [
        {"softmax": "adaptive", "cutoffs": [4, 12]},
        {"cell": "gru", "depth": 2, "tied": True, "hidden_width": 16},
        {"tied": True},  # tied with a projection (hidden 24 != embed 16)
        # AWD-LSTM regularisers.
        {"weight_drop": 0.2, "locked_dropout": True, "dropout": 0.1, "embed_dropout": 0.1,
         "ar_alpha": 2.0, "tar_beta": 1.0},
    ],
)
def test_variants_learn(overrides):
    fix_random_seed(0)
    nlp, lm = make_lm(**overrides)
    nlp.initialize(lambda: stream_corpus()(nlp))
    before = nlp.evaluate(dev_examples(nlp))["lm_ppl"]
    history = train(nlp, 6)
    assert history[-1] < history[0]
    after = nlp.evaluate(dev_examples(nlp))["lm_ppl"]
    # Chance is 20 (the fixture's 20 word types), a unigram model 15.7.
    # Untrained, the variants score 20.0-23.2; six epochs reach 5.9-9.5, at
    # most 0.47 of their untrained value.
    assert after < 12 and after < 0.6 * before


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="tied"):
        make_lm(softmax="adaptive", cutoffs=[4], tied=True)
    with pytest.raises(ValueError, match="cutoffs"):
        make_lm(softmax="adaptive", cutoffs=[40])
    with pytest.raises(ValueError, match="bptt"):
        make_lm(bptt=0)
    nlp, lm = make_lm()
    with pytest.raises(ValueError, match="vocab_size"):
        lm.set_words(["<unk>", "<eos>"] + [f"w{i}" for i in range(30)])
    with pytest.raises(ValueError, match="no tokens"):
        nlp.initialize(lambda: [Example(nlp.make_doc(""), nlp.make_doc(""))])


def test_bidirectional_model_never_sees_the_token_it_predicts():
    fix_random_seed(0)
    nlp, lm = make_lm(bidirectional=True, depth=2, bptt=4)
    lm.set_words(["<unk>", "<eos>"] + [f"w{i}" for i in range(22)])
    for p in lm.module.parameters():  # make every weight matter
        torch.nn.init.normal_(p, std=0.5)
    rng = numpy.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 22, 11)]
    base = {d: lm.predict_distributions(Doc(nlp.vocab, words=words), d) for d in ("fwd", "bwd")}
    for t in range(len(words)):
        changed = list(words)
        changed[t] = "w21" if words[t] != "w21" else "w20"
        doc = Doc(nlp.vocab, words=changed)
        fwd = lm.predict_distributions(doc, "fwd")
        bwd = lm.predict_distributions(doc, "bwd")
        # Forward row j predicts token j from tokens < j: rows up to t
        # cannot move, later rows must (the change is visible there).
        assert numpy.allclose(fwd[: t + 1], base["fwd"][: t + 1], atol=1e-6)
        if t + 1 < len(words):
            assert not numpy.allclose(fwd[t + 1 :], base["fwd"][t + 1 :], atol=1e-4)
        # Backward row j predicts token j from tokens > j.
        assert numpy.allclose(bwd[t:], base["bwd"][t:], atol=1e-6)
        if t > 0:
            assert not numpy.allclose(bwd[:t], base["bwd"][:t], atol=1e-4)


def test_bidirectional_scores_reported():
    fix_random_seed(0)
    nlp, lm = make_lm(bidirectional=True)
    nlp.initialize(lambda: stream_corpus()(nlp))
    before = nlp.evaluate(dev_examples(nlp))
    history = train(nlp, 4)
    assert history[-1] < history[0]
    scores = nlp.evaluate(dev_examples(nlp))
    assert {"lm_loss", "lm_ppl", "lm_score", "lm_backward_ppl"} <= set(scores)
    # Both directions learn (the backward score adds up each doc's
    # lm_backward_logprob). Untrained: 20.0 forward, 20.1 backward, chance
    # being 20; four epochs reach 14.0 and 13.2.
    for key in ("lm_ppl", "lm_backward_ppl"):
        assert scores[key] < 16 and scores[key] < 0.8 * before[key], key


def _save_bidirectional_lm(path, embed_width=32, hidden_width=16):
    fix_random_seed(0)
    nlp, lm = make_lm(bidirectional=True, embed_width=embed_width, hidden_width=hidden_width)
    nlp.initialize(lambda: stream_corpus()(nlp))
    train(nlp, 1)
    nlp.to_disk(path)
    return lm


def _textcat_with_transfer(lm_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("rnn_textcat", name="textcat", config=small_textcat_config())
    config = nlp.config.copy()
    config["initialize"]["after_init"] = {
        "@callbacks": "spacy_rnn.load_lm_encoder.v1",
        "path": str(lm_path),
        "component": "textcat",
    }
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    return nlp


def test_lm_weights_initialise_a_text_classifier(tmp_path):
    lm = _save_bidirectional_lm(tmp_path / "lm")
    nlp = _textcat_with_transfer(tmp_path / "lm")
    nlp.initialize(lambda: fixture_examples(nlp))
    (encoder,) = find_rnn_encoders(nlp, "textcat")
    pairs = ((lm.module.fwd.fwd[0], encoder.fwd[0]), (lm.module.bwd.fwd[0], encoder.bwd[0]))
    for src, dst in pairs:
        for name, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[name], value), name
    # ... and they survive training steps and still differ afterwards only
    # through learning (the classifier trains from them). The first update
    # reaches only the output layer, which starts at zero and so passes no
    # gradient down; after the second every weight has moved by about an
    # Adam step (7.5e-4), where weight decay alone moves none by more than
    # 1.1e-5 and a fresh initialisation differs by 0.09 to 1.1.
    optimizer = nlp.create_optimizer()
    for _ in range(2):
        nlp.update(fixture_examples(nlp)[:8], sgd=optimizer)
    for src, dst in pairs:
        for name, value in src.state_dict().items():
            moved = float((dst.state_dict()[name] - value).abs().max())
            assert 1e-4 < moved < 1e-2, (name, moved)
    assert set(nlp("great value").cats) == {"positive", "negative"}


def test_transfer_shape_mismatch_is_clear(tmp_path):
    _save_bidirectional_lm(tmp_path / "lm", embed_width=32, hidden_width=24)
    nlp = _textcat_with_transfer(tmp_path / "lm")
    with pytest.raises(ValueError, match="shape mismatch.*forward layer 0"):
        nlp.initialize(lambda: fixture_examples(nlp))


def test_transfer_needs_a_backward_stack(tmp_path):
    fix_random_seed(0)
    nlp_lm, _ = make_lm(embed_width=32, hidden_width=16)
    nlp_lm.to_disk(tmp_path / "lm")
    nlp = _textcat_with_transfer(tmp_path / "lm")
    with pytest.raises(ValueError, match="no backward stack"):
        nlp.initialize(lambda: fixture_examples(nlp))


def test_cpu_config_smoke_trains_on_tiny_stream(tmp_path):
    """The shipped CPU config, shrunk by overrides, trains end to end on a
    raw token file and the result is scored by evaluate-lm.

    The learning-rate schedule is shrunk too: 12 steps of the config's
    100-step warmup stay under 4% of its rate and leave the model untrained
    (perplexity 21.0 to 20.9)."""
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "lm_ptb_cpu.cfg"),
         "--output", str(tmp_path),
         "--paths.train", str(STREAM), "--paths.dev", str(STREAM),
         "--training.max_steps", "12", "--training.eval_frequency", "6",
         "--components.lm.vocab_size", "20", "--components.lm.cutoffs", "[8, 14]",
         "--components.lm.embed_width", "16", "--components.lm.hidden_width", "16",
         "--corpora.train.n_streams", "4", "--training.batcher.size", "4",
         "--training.optimizer.learn_rate.warmup_steps", "1",
         "--training.optimizer.learn_rate.initial_rate", "0.1"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LM_PPL" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "evaluate-lm", str(tmp_path / "model-best"),
         str(STREAM), "--output", str(tmp_path / "m.json")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert '"tokens": 318' in result.stdout
    # Untrained: 21.0 (the log's step 0); chance is 20, a unigram model
    # 15.7. The 12 steps reach 11.2.
    assert json.loads(result.stdout)["perplexity"] < 14


def test_optimizer_updates_weights_in_place():
    # Replacing parameter storage every step (Thinc's shim default) grew
    # memory by a copy of the weights per step; the component updates in place.
    fix_random_seed(0)
    nlp, lm = make_lm()
    nlp.initialize(lambda: stream_corpus()(nlp))
    params = dict(lm.module.named_parameters())
    pointers = {name: p.data_ptr() for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = Adam(0.01)
    examples = list(stream_corpus()(nlp))[:4]
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    for name, p in lm.module.named_parameters():
        assert p.data_ptr() == pointers[name], name
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0
    assert not torch.equal(params["fwd.fwd.0.weight_hh_l0"], before["fwd.fwd.0.weight_hh_l0"])


def test_activation_regularisation_adds_to_the_loss():
    import torch

    nlp, lm = make_lm(ar_alpha=2.0, tar_beta=1.0)
    H = torch.ones(2, 3, 4)
    raw = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = numpy.array([[True, True, True], [True, True, False]])
    rows = torch.as_tensor(numpy.flatnonzero(mask))
    penalty = float(lm._activation_penalty(H, raw, mask, rows, norm=5.0))
    # AR: mean(h^2) = 1; TAR: consecutive raw differences are all 4 -> 16.
    assert penalty == pytest.approx(2.0 * 1.0 + 1.0 * 16.0)
    nlp2, lm2 = make_lm()
    assert lm2._activation_penalty(H, raw, mask, rows, norm=5.0) == 0.0


def test_regularisers_are_off_at_prediction_time():
    fix_random_seed(0)
    nlp, lm = make_lm(weight_drop=0.5, locked_dropout=True, dropout=0.3, embed_dropout=0.3)
    nlp.initialize(lambda: stream_corpus()(nlp))
    texts = ["the cat sat on the mat", "a dog"]
    first = [d._.lm_logprob for d in nlp.pipe(texts)]
    second = [d._.lm_logprob for d in nlp.pipe(texts)]
    assert first == second


@pytest.mark.parametrize("first", [None, [3, 5]])
def test_equal_length_batches_score_like_padded_ones(first):
    # Equal-length batches (every stream batch) build their inputs with
    # whole-array operations, ragged ones row by row: same scores.
    fix_random_seed(0)
    nlp, lm = make_lm(bidirectional=True, depth=2, bptt=4)
    lm.set_words(["<unk>", "<eos>"] + [f"w{i}" for i in range(22)])
    for p in lm.module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    rng = numpy.random.default_rng(1)
    seqs = [rng.integers(2, 24, 9).astype("int64") for _ in range(2)]
    longer = rng.integers(2, 24, 13).astype("int64")
    for direction in ("fwd", "bwd"):
        equal, _, _ = lm._score(seqs, direction, train=False, first=first)
        ragged, _, _ = lm._score(
            seqs + [longer], direction, train=False,
            first=None if first is None else first + [7],
        )
        for a, b in zip(equal, ragged):
            assert numpy.allclose(a, b, atol=1e-6)
    # Training returns no per-doc scores, only the loss readings.
    out, _, readings = lm._score(seqs, "fwd", train=True, norm=18.0)
    assert out is None and len(readings) == 3

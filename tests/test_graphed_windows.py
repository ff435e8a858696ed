"""CUDA-graph training windows of ``rnn_lm``: what decides that a window may
be replayed, checked here on CPU; the replays themselves are tested in
``test_gpu.py`` (losses and weights equal to eager training)."""
import pytest
import torch

from spacy_rnn.torch_modules.graphed_windows import GraphedWindows, _flatten, _unflatten
from spacy_rnn.torch_modules.rnn_stack import RNNStack

from .test_language_model import make_lm


@pytest.mark.parametrize("cell,per_layer", [("lstm", 2), ("gru", 1)])
def test_state_flattens_and_comes_back(cell, per_layer):
    stack = RNNStack(4, 6, depth=2, cell=cell, bidirectional=False)
    _, state = stack.forward_stream(torch.randn(3, 5, 4))
    flat, layout = _flatten(state)
    assert layout == (per_layer, per_layer)
    assert all(isinstance(t, torch.Tensor) for t in flat)
    back = _unflatten(flat, layout)
    assert type(back[0]) is type(state[0])
    for a, b in zip(_flatten(back)[0], flat):
        assert a is b


def test_windows_on_cpu_run_eagerly():
    _, lm = make_lm()
    module = lm.module
    state = [(torch.zeros(1, 2, 24), torch.zeros(1, 2, 24))]
    ids = torch.zeros((2, 8), dtype=torch.int64)
    graphs = GraphedWindows()
    for _ in range(3):
        assert graphs.step(module, "fwd", ids, ids, state, 16.0) is None
    module.eval()
    with torch.no_grad():
        for _ in range(3):
            assert graphs.score(module, "fwd", ids, ids, state) is None
    assert not graphs._graphs and not graphs.disabled


@pytest.mark.parametrize(
    "overrides,in_training,in_evaluation",
    [
        ({}, True, True),
        ({"cuda_graphs": False}, False, False),
        ({"softmax": "adaptive", "cutoffs": [10], "tied": False}, False, False),
        ({"weight_drop": 0.3}, False, True),
        ({"ar_alpha": 2.0}, False, True),
        ({"tar_beta": 1.0}, False, True),
        ({"mixed_precision": True}, False, False),
        ({"locked_dropout": True, "embed_dropout": 0.1, "dropout": 0.3}, True, True),
    ],
)
def test_which_settings_allow_graphs(overrides, in_training, in_evaluation, recwarn):
    _, lm = make_lm(**overrides)
    assert lm._graphs_apply(train=True) is in_training
    assert lm._graphs_apply(train=False) is in_evaluation


def test_cuda_graphs_is_the_configs_call_not_the_stored_cfg(tmp_path):
    nlp, lm = make_lm()
    assert lm.cfg["cuda_graphs"] is True
    nlp.initialize()
    nlp.to_disk(tmp_path / "lm")
    import spacy

    loaded = spacy.load(tmp_path / "lm", config={"components": {"rnn_lm": {"cuda_graphs": False}}})
    assert loaded.get_pipe("rnn_lm").cfg["cuda_graphs"] is False


def test_a_shape_is_captured_on_its_second_sighting_and_graphs_are_bounded():
    from spacy_rnn.torch_modules.graphed_windows import MAX_GRAPHS

    graphs = GraphedWindows()
    captured = []

    def capture(name):
        captured.append(name)
        return name

    assert graphs._graph_for("a", lambda: capture("a")) is None
    assert captured == []
    assert graphs._graph_for("a", lambda: capture("a")) == "a"
    assert graphs._graph_for("a", lambda: capture("a")) == "a"
    assert captured == ["a"]
    for i in range(2 * MAX_GRAPHS):
        graphs._graph_for(i, lambda i=i: capture(i))
        graphs._graph_for(i, lambda i=i: capture(i))
    assert len(graphs._graphs) == MAX_GRAPHS
    # A failed capture (None) is not stored and is tried again later.
    graphs.clear()
    graphs._graph_for("b", lambda: None)
    assert graphs._graph_for("b", lambda: None) is None and "b" not in graphs._graphs


def test_new_parameter_storage_drops_the_graphs():
    _, lm = make_lm()
    graphs = GraphedWindows()
    ids = torch.zeros((2, 8), dtype=torch.int64)
    state = [(torch.zeros(1, 2, 24), torch.zeros(1, 2, 24))]
    flat, layout = _flatten(state)
    key = graphs._key(lm.module, "eval", "fwd", ids, 0, flat, layout)
    graphs._graph_for(key, lambda: "g")
    graphs._graph_for(key, lambda: "g")
    assert graphs._graphs
    assert graphs._key(lm.module, "eval", "fwd", ids, 0, flat, layout) == key
    assert graphs._graphs
    with torch.no_grad():
        lm.module.embed.weight = torch.nn.Parameter(lm.module.embed.weight.clone())
    graphs._key(lm.module, "eval", "fwd", ids, 0, flat, layout)
    assert not graphs._graphs


def test_a_pipeline_with_graphs_pickles_and_copies_without_them():
    import copy
    import pickle

    _, lm = make_lm()
    # Stand-ins for captured graphs: closures, which pickle refuses.
    lm._graphs._graphs["key"] = lambda: None
    lm._graphs._seen["key"] = 2
    for clone in (copy.deepcopy(lm), pickle.loads(pickle.dumps(lm))):
        assert clone._graphs._graphs == {} and clone._graphs._seen == {}
        assert not clone._graphs.disabled
    lm._graphs.disabled = True
    assert copy.deepcopy(lm)._graphs.disabled


def test_the_word_count_is_part_of_a_training_graphs_key():
    # A capture bakes in the mask of unused output rows.
    _, lm = make_lm()
    graphs = GraphedWindows()
    seen = []
    graphs._graph_for = lambda key, capture: seen.append(key)
    state = [(torch.zeros(1, 2, 24, device="cpu"), torch.zeros(1, 2, 24))]
    ids = torch.zeros((2, 8), dtype=torch.int64)
    module = lm.module
    # Pretend to be on a GPU as far as the device check goes.
    fake = type("Ids", (), {"device": torch.device("cuda"), "shape": ids.shape})()
    module.set_n_active(20)
    graphs.step(module, "fwd", fake, ids, state, 16.0)
    module.set_n_active(24)
    graphs.step(module, "fwd", fake, ids, state, 16.0)
    assert len(seen) == 2 and seen[0] != seen[1]


class EagerReplays(GraphedWindows):
    """Stands in for captured graphs on CPU: each "replay" computes what the
    captured computation computes (the same ``_Window`` module for training),
    so the component's plumbing around replays is checked without a GPU."""

    def __init__(self):
        super().__init__()
        self.calls = {"train": 0, "eval": 0}

    def applies_to(self, device):
        return True

    def step(self, lm, direction, inputs, targets, state, norm):
        from spacy_rnn.torch_modules.graphed_windows import _Window

        if state is None or any(p.grad is not None for p in lm.parameters()):
            return None
        flat, layout = _flatten(state)
        outputs = _Window(lm, direction, norm, layout)(inputs, targets, *flat)
        self.calls["train"] += 1
        return outputs[0], _unflatten(outputs[1:], layout)

    def score(self, lm, direction, inputs, targets, state):
        if state is None:
            return None
        H, new_state = lm.run(direction, inputs.clone(), state)
        lp = lm.target_log_probs(H.reshape(-1, H.shape[-1]), targets.reshape(-1))
        self.calls["eval"] += 1
        return lp.clone(), new_state


def _train(replays, epochs=2):
    from thinc.api import Adam, fix_random_seed

    from .test_language_model import stream_corpus, train_batches

    fix_random_seed(0)
    nlp, lm = make_lm(depth=2)
    if replays:
        lm._graphs = EagerReplays()
    nlp.initialize(lambda: stream_corpus()(nlp))
    return lm, sum(train_batches(nlp, epochs, Adam(0.01)), [])


def test_the_component_trains_the_same_through_replays():
    eager, eager_losses = _train(False)
    replayed, replay_losses = _train(True)
    # Every full stream batch after the first of an epoch went through it.
    assert replayed._graphs.calls["train"] == 2 * 8
    assert replay_losses == pytest.approx(eager_losses, rel=1e-6)
    for a, b in zip(eager.module.parameters(), replayed.module.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_component_scores_the_same_through_replays():
    from .test_language_model import STREAM, dev_examples

    from .test_language_model import stream_corpus

    nlp, lm = make_lm()
    nlp.initialize(lambda: stream_corpus()(nlp))
    tokens = STREAM.read_text(encoding="utf8").split()
    eager = lm.evaluate_stream(tokens, batch_size=2)
    eager_ppl = nlp.evaluate(dev_examples(nlp))["lm_ppl"]
    lm._graphs = EagerReplays()
    assert lm.evaluate_stream(tokens, batch_size=2)["nll"] == pytest.approx(eager["nll"], rel=1e-6)
    assert nlp.evaluate(dev_examples(nlp))["lm_ppl"] == pytest.approx(eager_ppl, rel=1e-6)
    assert lm._graphs.calls["eval"] > 10

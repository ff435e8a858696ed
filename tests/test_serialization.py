import pickle
import subprocess
import sys
import textwrap

import numpy
import pytest
import spacy
import srsly
from thinc.api import Adam, fix_random_seed

from spacy_rnn.serialization import UnsafeWeightsError

from .util import blank_with_textcat, fixture_examples

TEXTS = ["works great and I love it", "broke after two days", "", "ok"]


def _trained_nlp():
    fix_random_seed(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    return nlp


def _scores(nlp):
    return [[doc.cats[k] for k in sorted(doc.cats)] for doc in nlp.pipe(TEXTS)]


def test_bytes_round_trip_before_initialize():
    nlp = blank_with_textcat()
    textcat = nlp.get_pipe("rnn_textcat")
    textcat.add_label("positive")
    textcat.add_label("negative")
    data = textcat.to_bytes()
    nlp2 = blank_with_textcat()
    nlp2.get_pipe("rnn_textcat").from_bytes(data)
    assert nlp2.get_pipe("rnn_textcat").labels == ("positive", "negative")


def test_bytes_round_trip_after_initialize():
    nlp = _trained_nlp()
    nlp2 = blank_with_textcat()
    nlp2.get_pipe("rnn_textcat").from_bytes(nlp.get_pipe("rnn_textcat").to_bytes())
    assert numpy.array_equal(_scores(nlp), _scores(nlp2))


def test_disk_round_trip_in_fresh_process(tmp_path):
    nlp = _trained_nlp()
    nlp.to_disk(tmp_path / "pipeline")
    expected = _scores(nlp)
    # No "import spacy_rnn": the entry points must bring the factories in.
    script = textwrap.dedent(
        f"""
        import json, spacy
        nlp = spacy.load({str(tmp_path / 'pipeline')!r})
        texts = {TEXTS!r}
        print(json.dumps([[d.cats[k] for k in sorted(d.cats)] for d in nlp.pipe(texts)]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = srsly.json_loads(out.stdout.strip().splitlines()[-1])
    assert numpy.array_equal(numpy.asarray(got, dtype="float32"), numpy.asarray(expected, dtype="float32"))


def _pickle_payload(marker_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker_path), "w"))

    return pickle.dumps(Evil())


def _plant_in_weights(model_bytes: bytes, payload: bytes) -> bytes:
    # Replace the stored state of every PyTorch shim with the payload.
    msg = srsly.msgpack_loads(model_bytes)
    planted = 0
    for node_shims in msg["shims"]:
        for j, shim_bytes in enumerate(node_shims):
            shim_msg = srsly.msgpack_loads(shim_bytes)
            shim_msg["state"] = payload
            node_shims[j] = srsly.msgpack_dumps(shim_msg)
            planted += 1
    assert planted, "no torch weights found to replace"
    return srsly.msgpack_dumps(msg)


def test_malicious_pickle_in_weights_is_refused(tmp_path):
    nlp = _trained_nlp()
    nlp.to_disk(tmp_path / "pipeline")
    marker = tmp_path / "payload-ran"
    model_file = tmp_path / "pipeline" / "rnn_textcat" / "model"
    model_file.write_bytes(_plant_in_weights(model_file.read_bytes(), _pickle_payload(marker)))
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        spacy.load(tmp_path / "pipeline")
    assert not marker.exists()


def test_torch_save_zip_in_weights_is_refused(tmp_path):
    import io

    import torch

    nlp = _trained_nlp()
    textcat = nlp.get_pipe("rnn_textcat")
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buf)
    model_bytes = _plant_in_weights(textcat.model.to_bytes(), buf.getvalue())
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        textcat.model.from_bytes(model_bytes)


def test_corrupt_weights_are_a_clear_error():
    nlp = _trained_nlp()
    textcat = nlp.get_pipe("rnn_textcat")
    model_bytes = _plant_in_weights(textcat.model.to_bytes(), b"\x00garbage" * 10)
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        textcat.model.from_bytes(model_bytes)


def test_safetensors_blob_starting_with_0x80_loads():
    # The first byte of a safetensors blob is the low byte of its header
    # length, so 0x80 (a pickle's first byte) must not be mistaken for one.
    import torch
    from safetensors.torch import save

    from spacy_rnn.serialization import load_state_bytes

    state = {"w": torch.ones(2, 3)}
    for pad in range(300):
        data = save(state, metadata={"pad": " " * pad})
        if data[:1] == b"\x80":
            break
    else:  # pragma: no cover
        pytest.fail("could not build a blob starting with 0x80")
    assert torch.equal(load_state_bytes(data)["w"], torch.ones(2, 3))


def test_encoder_training_keeps_memory_flat():
    # Thinc's own shim grows by one copy of the weights per step; ours
    # updates in place, so parameters keep their storage across updates.
    nlp = _trained_nlp()
    encoder = next(n for n in nlp.get_pipe("rnn_textcat").model.walk() if n.name == "rnn_encoder")
    params = list(encoder.shims[0]._model.parameters())
    pointers = [p.data_ptr() for p in params]
    examples = fixture_examples(nlp)
    optimizer = Adam(0.01)
    before = [p.detach().clone() for p in params]
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    assert [p.data_ptr() for p in params] == pointers
    assert any(not torch_equal(a, p) for a, p in zip(before, params))


def torch_equal(a, b):
    import torch

    return torch.equal(a, b.detach())

"""The fused output loss (``torch_modules/fused_cross_entropy.py``) against
torch's ``linear`` + ``cross_entropy``, its buffer lending, and the
``rnn_lm`` setting that turns it on."""
import copy
import pickle

import numpy
import pytest
import torch
from thinc.api import Adam, fix_random_seed

from spacy_rnn.corpus.token_stream import TokenStreamCorpus
from spacy_rnn.torch_modules.fused_cross_entropy import (
    LossWorkspace,
    linear_cross_entropy_sum,
    linear_target_log_probs,
)
from spacy_rnn.torch_modules.language_model import RNNLanguageModel

from .test_language_model import dev_examples, make_lm, stream_corpus, train_batches
from .util import update_in_batches


def _operands(n, width, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(n, width, generator=gen).requires_grad_()
    W = (torch.rand(vocab, width, generator=gen) - 0.5).requires_grad_()
    b = (torch.rand(vocab, generator=gen) - 0.5).requires_grad_()
    return H, W, b


def _reference(H, W, b, targets, n_words, scale):
    logits = torch.nn.functional.linear(H, W, b)
    if n_words < W.shape[0]:
        logits = logits.masked_fill(torch.arange(W.shape[0]) >= n_words, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum") * scale


def _grads(loss, tensors):
    for t in tensors:
        t.grad = None
    loss.backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("n,width,vocab,n_words", [
    (1, 3, 5, 5), (7, 16, 50, 50), (7, 16, 50, 31), (120, 32, 300, 257),
])
@pytest.mark.parametrize("scale", [1.0, 0.05])
def test_loss_and_gradients_match_torch(n, width, vocab, n_words, scale):
    H, W, b = _operands(n, width, vocab)
    targets = torch.randint(0, n_words, (n,), generator=torch.Generator().manual_seed(1))
    ref = _reference(H, W, b, targets, n_words, scale)
    ref_grads = _grads(ref, (H, W, b))
    ws = LossWorkspace()
    fused = linear_cross_entropy_sum(H, W, b, targets, n_words, ws) * scale
    fused_grads = _grads(fused, (H, W, b))
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # Masked columns get no gradient at all.
    assert not W.grad[n_words:].any() and not b.grad[n_words:].any()
    # Scoring: torch's log_softmax, gathered.
    with torch.no_grad():
        want = torch.log_softmax(torch.nn.functional.linear(H, W, b)[:, :n_words], -1)
    got = linear_target_log_probs(H, W, b, targets, n_words, ws)
    torch.testing.assert_close(got, want.gather(1, targets[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)


def test_the_buffer_is_reused_and_lent_to_one_pass_at_a_time():
    H, W, b = _operands(6, 8, 40)
    targets = torch.arange(6)
    ws = LossWorkspace()
    linear_cross_entropy_sum(H, W, b, targets, 40, ws).backward()
    kept = ws._buffer.data_ptr()
    # Two passes in flight: the second gets a buffer of its own, and both
    # backward passes stay exact.
    first = linear_cross_entropy_sum(H, W, b, targets, 40, ws)
    second = linear_cross_entropy_sum(H * 2, W, b, targets, 40, ws)
    ref_first = _grads(_reference(H, W, b, targets, 40, 1.0), (W,))[0]
    ref_second = _grads(_reference(H * 2, W, b, targets, 40, 1.0), (W,))[0]
    W.grad = None
    second.backward()
    torch.testing.assert_close(W.grad, ref_second, rtol=1e-4, atol=1e-6)
    W.grad = None
    first.backward()
    torch.testing.assert_close(W.grad, ref_first, rtol=1e-4, atol=1e-6)
    # A shorter pass (a stream's last batch) is a view of the kept buffer.
    linear_cross_entropy_sum(H[:3], W, b, targets[:3], 40, ws).backward()
    assert ws._buffer.data_ptr() == kept
    # A graph dropped without its backward pass gives the buffer back.
    dropped = linear_cross_entropy_sum(H, W, b, targets, 40, ws)
    assert ws.lent
    del dropped
    assert not ws.lent
    # Releasing twice (backward, then garbage collection) gives back once:
    # a newer lease keeps its hold.
    old = ws.borrow(6, 40, H)
    old.release()
    newer = ws.borrow(6, 40, H)
    old.release()
    del old
    assert ws.lent
    newer.release()
    assert not ws.lent


def test_backpropagating_twice_is_a_clear_error():
    H, W, b = _operands(4, 8, 20)
    loss = linear_cross_entropy_sum(H, W, b, torch.arange(4), 20, LossWorkspace())
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        loss.backward()


def test_buffers_over_the_limit_are_not_kept():
    H, W, b = _operands(50, 8, 100)
    ws = LossWorkspace(max_bytes=50 * 100 * 4 - 1)
    linear_cross_entropy_sum(H, W, b, torch.arange(50), 100, ws).backward()
    assert ws._buffer is None and not ws.lent
    linear_cross_entropy_sum(H[:10], W, b, torch.arange(10), 100, ws).backward()
    assert ws._buffer is not None


def test_workspace_pickles_and_copies_empty():
    H, W, b = _operands(4, 8, 20)
    ws = LossWorkspace(max_bytes=12345)
    linear_cross_entropy_sum(H, W, b, torch.arange(4), 20, ws).backward()
    for clone in (copy.deepcopy(ws), pickle.loads(pickle.dumps(ws))):
        assert clone._buffer is None and clone.max_bytes == 12345 and not clone.lent


def test_module_takes_the_fused_path_only_where_it_applies():
    lm = RNNLanguageModel(30, 8, 8, fused_loss=True)
    H = torch.randn(5, 8)
    assert lm._fused(H)
    assert not RNNLanguageModel(30, 8, 8, fused_loss=False)._fused(H)
    assert not lm._fused(H.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lm._fused(H)
    adaptive = RNNLanguageModel(30, 8, 8, softmax="adaptive", cutoffs=[10], fused_loss=True)
    assert not adaptive._fused(H)
    # After training on it, the module holds one kept buffer.
    lm.target_nll_sum(H.requires_grad_(), torch.arange(5)).backward()
    assert lm._loss_workspace._buffer is not None


@pytest.mark.parametrize("tied", [False, True])
def test_rnn_lm_trains_the_same_with_and_without_the_fused_loss(tied):
    """Same initial weights, same stream batches: per-batch losses, final
    weights and dev perplexity agree (float rounding only)."""
    runs = []
    for fused in (True, False):
        fix_random_seed(0)
        nlp, lm = make_lm(fused_loss=fused, tied=tied, embed_width=24)
        nlp.initialize(lambda: stream_corpus()(nlp))
        assert lm.module.fused_loss is fused
        losses = train_batches(nlp, 3, Adam(0.01))
        scores = nlp.evaluate(dev_examples(nlp))
        weights = {k: v.detach().clone() for k, v in lm.module.state_dict().items()}
        runs.append((losses, scores, weights))
    (l_a, s_a, w_a), (l_b, s_b, w_b) = runs
    numpy.testing.assert_allclose(numpy.ravel(l_a), numpy.ravel(l_b), rtol=1e-4)
    assert s_a["lm_ppl"] == pytest.approx(s_b["lm_ppl"], rel=1e-4)
    for key in w_a:
        torch.testing.assert_close(w_a[key], w_b[key], rtol=1e-3, atol=1e-5)
    # The losses went down: these are real training runs.
    assert sum(l_a[-1]) < sum(l_a[0])


def test_fused_loss_is_the_configs_call_on_load(tmp_path):
    fix_random_seed(0)
    nlp, lm = make_lm(fused_loss=False)
    nlp.initialize(lambda: stream_corpus()(nlp))
    nlp.to_disk(tmp_path / "lm")
    import spacy

    loaded = spacy.load(tmp_path / "lm", config={"components": {"rnn_lm": {"fused_loss": True}}})
    assert loaded.get_pipe("rnn_lm").module.fused_loss is True
    docs = [nlp.make_doc("the cat sat on the mat")]
    a = nlp.get_pipe("rnn_lm").predict(docs)["fwd"][0]
    b = loaded.get_pipe("rnn_lm").predict(docs)["fwd"][0]
    numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nothing_reads_the_kept_buffer_between_passes():
    """Poisoning the kept buffer with NaN after every update changes nothing:
    no pass reads what an earlier pass left there."""
    runs = []
    for poison in (False, True):
        fix_random_seed(0)
        nlp, lm = make_lm()
        nlp.initialize(lambda: stream_corpus()(nlp))
        fill = (lambda: lm.module._loss_workspace._buffer.fill_(float("nan"))) if poison else None
        losses = numpy.ravel(train_batches(nlp, 3, Adam(0.01), after_update=fill)).tolist()
        runs.append((losses, nlp.evaluate(dev_examples(nlp))["lm_ppl"]))
    assert runs[0] == runs[1]
    assert all(numpy.isfinite(runs[1][0]))


@pytest.mark.slow
def test_full_softmax_lm_learns_ptb_with_and_without_the_fused_loss(shared_data):
    """The benchmark's shape (2x200 LSTM, 10k words, full softmax, 20 streams
    of 35 tokens, Adam 0.001, global-norm clipping at 0.25) for 500 steps on
    PTB, one seed. Measured on the 2-core dev VM: validation perplexity (first
    20,000 tokens) 434.5 with the fused loss, 434.8 without; about 95 s for both."""
    import spacy

    from spacy_rnn.optimization.global_norm import make_clip_global_norm_callback

    ptb = shared_data / "ptb"
    valid = []
    for line in (ptb / "ptb.valid.txt").read_text(encoding="utf8").splitlines():
        valid.extend(line.split() + ["<eos>"])
    valid = valid[:20000]
    ppl = {}
    for fused in (True, False):
        fix_random_seed(0)
        nlp = spacy.blank("en")
        lm = nlp.add_pipe("rnn_lm", config={
            "vocab_size": 10000, "embed_width": 200, "hidden_width": 200, "depth": 2,
            "dropout": 0.2, "tied": False, "softmax": "full", "bptt": 35, "fused_loss": fused,
        })
        corpus = TokenStreamCorpus(ptb / "ptb.train.txt", n_streams=20, doc_length=35)
        lm.initialize(lambda: iter([]), nlp=nlp, vocab_path=str(ptb / "ptb.train.txt"))
        make_clip_global_norm_callback(0.25, ["rnn_lm"])(nlp)
        optimizer = Adam(0.001, grad_clip=0.0, L2=0.0)
        assert update_in_batches(nlp, corpus(nlp), 20, 500, optimizer) == 500
        ppl[fused] = lm.evaluate_stream(valid, batch_size=10)["perplexity"]
    assert ppl[True] < 520 and ppl[False] < 520
    assert ppl[True] == pytest.approx(ppl[False], rel=0.05)

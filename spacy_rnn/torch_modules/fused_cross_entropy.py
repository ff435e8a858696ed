"""The output layer and its cross-entropy as one autograd function that
reuses one buffer.

Plain PyTorch. ``F.cross_entropy(F.linear(H, W, b), y)`` allocates a
(tokens, vocabulary) tensor four times per window: the logits, the log-softmax,
the gradient of the loss and the gradient of the logits (28 MB each for a
700-token window at 10k words). On CPU, glibc returns buffers of that size
to the kernel when they are freed, so a step can pay ~7,000 page faults per
buffer to get them back (how often depends on the state of the heap). Here the logits are written into a buffer the ``LossWorkspace`` keeps between
calls, turned into log-probabilities in place, and turned into the gradient
of the logits in place during the backward pass: one buffer, and no
allocation of that size.

The buffer is lent to one forward pass at a time; the backward pass gives it
back. A second forward pass before the first one's backward pass (or a
graph that is dropped without one) gets a fresh buffer, so results never
depend on the lending.
"""
import threading
from typing import Optional

import torch

__all__ = ["LossWorkspace", "linear_cross_entropy_sum", "linear_target_log_probs"]


class LossWorkspace:
    """A reusable (rows, vocabulary) buffer, lent to one pass at a time.

    Not part of a module's state: pickling or copying it gives an empty one.

    max_bytes (int): The largest buffer kept between calls. A larger request
        (prediction over a big batch of docs) gets a buffer of its own, freed
        after the call, so a pipeline never holds on to one batch's peak.
    """

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = int(max_bytes)
        self._buffer: Optional[torch.Tensor] = None
        self._lent = False
        self._lock = threading.Lock()

    def borrow(self, rows: int, cols: int, like: torch.Tensor) -> "_Lease":
        """Lend a (rows, cols) buffer of ``like``'s dtype and device.

        rows (int): Rows needed.
        cols (int): Columns needed.
        like (torch.Tensor): Tensor whose dtype and device the buffer takes.
        RETURNS (_Lease): Holds the buffer until ``release`` (or until the
            lease is garbage-collected).
        """
        with self._lock:
            if self._lent or rows * cols * like.element_size() > self.max_bytes:
                return _Lease(None, like.new_empty((rows, cols)))
            buf = self._buffer
            if (
                buf is None
                or buf.dtype != like.dtype
                or buf.device != like.device
                or buf.shape[1] != cols
                or buf.shape[0] < rows
            ):
                # Kept at the largest size seen: a stream's last, shorter
                # batch is a view of it, and the next epoch's batches fit.
                buf = like.new_empty((rows, cols))
                self._buffer = buf
            self._lent = True
            return _Lease(self, buf[:rows])

    @property
    def lent(self) -> bool:
        """bool: Whether a pass holds the kept buffer."""
        return self._lent

    def _give_back(self) -> None:
        # Called once per lease (``_Lease.release`` forgets its owner), and
        # no other lease gets the kept buffer until then.
        with self._lock:
            self._lent = False

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state.get("max_bytes", 64 << 20))

    def __deepcopy__(self, memo):
        return LossWorkspace(self.max_bytes)


class _Lease:
    def __init__(self, owner: Optional[LossWorkspace], buffer: torch.Tensor):
        self._owner = owner
        self.buffer = buffer

    def release(self) -> None:
        owner, self._owner = self._owner, None
        self.buffer = None
        if owner is not None:
            owner._give_back()

    def __del__(self):
        # A graph dropped without its backward pass frees its context, and
        # with it this lease.
        self.release()


def linear_cross_entropy_sum(
    H: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    n_words: int,
    workspace: LossWorkspace,
) -> torch.Tensor:
    """Summed cross-entropy of ``H @ weight.T + bias`` against ``targets``,
    over the first ``n_words`` columns only.

    H (torch.Tensor): (n, width) hidden vectors.
    weight (torch.Tensor): (vocab, width) output matrix.
    bias (torch.Tensor): (vocab,) output bias.
    targets (torch.Tensor): (n,) int64 word ids below ``n_words``.
    n_words (int): Columns in use; the rest are left out of the softmax.
    workspace (LossWorkspace): Lends the (n, vocab) buffer.
    RETURNS (torch.Tensor): 0-d loss, differentiable in H, weight and bias.
    """
    return _LinearCrossEntropy.apply(H, weight, bias, targets, int(n_words), workspace)


def linear_target_log_probs(
    H: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    n_words: int,
    workspace: LossWorkspace,
) -> torch.Tensor:
    """Log-softmax probability of each target, without autograd: for
    scoring (evaluation and prediction). The arguments are those of
    ``linear_cross_entropy_sum``.

    RETURNS (torch.Tensor): (n,) natural-log probabilities.
    """
    with torch.no_grad():
        lease = workspace.borrow(H.shape[0], weight.shape[0], H)
        try:
            return _log_softmax_into(lease.buffer, H, weight, bias, targets, n_words)
        finally:
            lease.release()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, H, weight, bias, targets, n_words, workspace):
        lease = workspace.borrow(H.shape[0], weight.shape[0], H)
        target_lp = _log_softmax_into(lease.buffer, H, weight, bias, targets, n_words)
        ctx.lease = lease
        ctx.save_for_backward(H, weight, targets)
        return -target_lp.sum()

    @staticmethod
    def backward(ctx, grad):
        H, weight, targets = ctx.saved_tensors
        lease = ctx.lease
        if lease.buffer is None:
            raise RuntimeError(
                "spacy-rnn: the fused output loss was backpropagated twice; it "
                "keeps its buffer for one backward pass (set fused_loss = false "
                "to keep torch's cross_entropy)"
            )
        # softmax - one_hot(targets), the gradient of the summed loss with
        # respect to the logits, written over the log-probabilities.
        G = lease.buffer.exp_()
        G.scatter_add_(1, targets.unsqueeze(1), G.new_full((G.shape[0], 1), -1.0))
        # The incoming scale (1 / norm) goes on the small operands and
        # results, not on the (n, vocab) buffer: one pass fewer.
        grad_H = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_H = (G @ weight).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_weight = G.t() @ (H * grad)
        if ctx.needs_input_grad[2]:
            grad_bias = G.sum(0).mul_(grad)
        lease.release()
        return grad_H, grad_weight, grad_bias, None, None, None


def _log_softmax_into(E, H, weight, bias, targets, n_words):
    # E <- log_softmax(H @ weight.T + bias) over the first n_words columns,
    # the rest -inf; returns each target's log-probability. torch's row-wise
    # kernel reads a row before writing it, so it may write over its input
    # (tests/test_fused_cross_entropy.py checks it against cross_entropy).
    torch.addmm(bias, H, weight.t(), out=E)
    if n_words < E.shape[1]:
        E[:, n_words:] = float("-inf")
    torch.log_softmax(E, 1, out=E)
    return E.gather(1, targets.unsqueeze(1)).squeeze(1)

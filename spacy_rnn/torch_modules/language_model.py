"""Word-level recurrent language model: embedding, one or two ``RNNStack``
stacks and a (full or adaptive) softmax.

Plain PyTorch. The forward stack reads left to right and predicts the next
token; the optional backward stack (ELMo style) reads the sequence reversed
and predicts the previous token. Both stacks are one-directional
``RNNStack``s so their per-layer modules line up with the ``fwd`` / ``bwd``
modules of a bidirectional ``spacy-rnn.RNNEncoder.v1`` for transfer.

The module is built with ``vocab_size`` output rows before the vocabulary is
known. The ``n_active`` buffer records how many rows the vocabulary actually
uses; the rest are masked out of every distribution, so probabilities are
always over real words only. It is a buffer so it travels with the weights.
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from .cpu_loop import cpu_autocast_enabled
from .fused_cross_entropy import LossWorkspace, linear_cross_entropy_sum, linear_target_log_probs
from .rnn_stack import RNNStack

SOFTMAXES = ("full", "adaptive")


class RNNLanguageModel(nn.Module):
    """Recurrent word language model.

    vocab_size (int): Rows of the embedding and output layer.
    embed_width (int): Width of the word embeddings.
    hidden_width (int): Width of each recurrent layer.
    depth (int): Recurrent layers per direction.
    cell (str): "lstm", "gru", "rnn_tanh" or "rnn_relu".
    bidirectional (bool): Add a backward stack that predicts the previous word.
    dropout (float): Dropout on embeddings, between layers and before the output.
    tied (bool): Share the embedding matrix with the output layer (adds a
        projection when ``hidden_width != embed_width``).
    softmax (str): "full" or "adaptive" (``nn.AdaptiveLogSoftmaxWithLoss``).
    cutoffs (Sequence[int]): Cluster boundaries of the adaptive softmax.
    div_value (float): Width divisor per adaptive-softmax cluster.
    init (str): Initialisation scheme of the recurrent weights.
    weight_drop (float): DropConnect on the recurrent hidden-to-hidden weights.
    locked_dropout (bool): Use one dropout mask per stream for every time step
        (variational dropout) on embeddings, between layers and on outputs.
    embed_dropout (float): Drop whole words: rows of the embedding matrix
        (Gal & Ghahramani 2016; AWD-LSTM's embedding dropout).
    fused_loss (bool): On CPU, with the full softmax in float32, compute the
        output layer and its cross-entropy in one buffer kept between calls
        (``fused_cross_entropy.py``) instead of torch's ``linear`` and
        ``cross_entropy``, which allocate four buffers of that size a window.
        Same values up to float rounding; on a GPU the torch path runs.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_width: int,
        hidden_width: int,
        depth: int = 1,
        cell: str = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.0,
        tied: bool = False,
        softmax: str = "full",
        cutoffs: Sequence[int] = (),
        div_value: float = 4.0,
        init: str = "orthogonal",
        weight_drop: float = 0.0,
        locked_dropout: bool = False,
        embed_dropout: float = 0.0,
        fused_loss: bool = True,
    ):
        super().__init__()
        if not 0.0 <= embed_dropout < 1.0:
            raise ValueError(f"embed_dropout must be in [0, 1), got {embed_dropout}")
        if softmax not in SOFTMAXES:
            raise ValueError(f"Unknown softmax {softmax!r}: choose one of {', '.join(SOFTMAXES)}")
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3 (<unk>, <eos>, a word), got {vocab_size}")
        if tied and softmax == "adaptive":
            raise ValueError(
                "tied embeddings need the full softmax: the adaptive softmax "
                "has no single output matrix to share"
            )
        if softmax == "adaptive":
            cutoffs = [int(c) for c in cutoffs]
            if not cutoffs or sorted(set(cutoffs)) != cutoffs or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size:
                raise ValueError(
                    f"adaptive softmax cutoffs must be increasing, positive and "
                    f"below vocab_size ({vocab_size}); got {cutoffs}"
                )
        self.vocab_size = vocab_size
        self.bidirectional = bidirectional
        self.softmax = softmax
        self.embed = nn.Embedding(vocab_size, embed_width)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        stack_args = dict(
            depth=depth, cell=cell, bidirectional=False, dropout=dropout, init=init,
            weight_drop=weight_drop, locked_dropout=locked_dropout,
        )
        self.dropout_rate = float(dropout)
        self.locked_dropout = bool(locked_dropout)
        self.embed_dropout = float(embed_dropout)
        self.fwd = RNNStack(embed_width, hidden_width, **stack_args)
        self.bwd = RNNStack(embed_width, hidden_width, **stack_args) if bidirectional else None
        self.drop = nn.Dropout(dropout)
        out_width = hidden_width
        self.proj = None
        if tied and hidden_width != embed_width:
            self.proj = nn.Linear(hidden_width, embed_width)
            out_width = embed_width
        if softmax == "full":
            self.out = nn.Linear(out_width, vocab_size)
            nn.init.zeros_(self.out.bias)
            if tied:
                self.out.weight = self.embed.weight
            else:
                nn.init.uniform_(self.out.weight, -0.1, 0.1)
        else:
            self.out = nn.AdaptiveLogSoftmaxWithLoss(
                out_width, vocab_size, cutoffs=cutoffs, div_value=div_value
            )
        self.register_buffer("n_active", torch.tensor(vocab_size, dtype=torch.int64))
        # A host copy of the buffer: reading a CUDA scalar waits for the GPU,
        # and every softmax needs the count. None: read it again.
        self._n_active_int: Optional[int] = vocab_size
        # ((word count, device), bool mask of the unused output rows).
        self._unused_cache = None
        self.fused_loss = bool(fused_loss)
        self._loss_workspace = LossWorkspace()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def n_words(self) -> int:
        """The number of output rows in use (the ``n_active`` buffer)."""
        if self._n_active_int is None:
            self._n_active_int = int(self.n_active)
        return self._n_active_int

    def _load_from_state_dict(self, *args, **kwargs):
        # The buffer may change under the host copy here.
        self._n_active_int = None
        super()._load_from_state_dict(*args, **kwargs)

    def set_n_active(self, n: int) -> None:
        """Declare how many output rows the vocabulary uses (rows ``n:`` are
        masked out of every distribution).

        n (int): Number of words in the vocabulary.
        """
        if not 1 <= n <= self.vocab_size:
            raise ValueError(f"n_active must be in [1, {self.vocab_size}], got {n}")
        self.n_active.fill_(int(n))
        self._n_active_int = int(n)

    def stack(self, direction: str) -> RNNStack:
        if direction == "fwd":
            return self.fwd
        if self.bwd is None:
            raise ValueError("this language model has no backward stack")
        return self.bwd

    def run(
        self,
        direction: str,
        inputs: torch.Tensor,
        state: Optional[List] = None,
        return_raw: bool = False,
    ):
        """Encode a window of word ids, carrying recurrent state.

        direction (str): "fwd" or "bwd" (ids must already be reversed for "bwd").
        inputs (torch.Tensor): (batch, time) int64 word ids.
        state (Optional[List]): State returned by the previous window.
        return_raw (bool): Also return the last layer's output before the
            output dropout (for temporal activation regularisation).
        RETURNS (Tuple[torch.Tensor, List]): (batch, time, out_width) hidden
            vectors ready for the output layer, and the new state (and the
            raw output when ``return_raw``).
        """
        X = self._dropout(self._embed(inputs))
        raw, state = self.stack(direction).forward_stream(X, state)
        H = self._dropout(raw)
        if self.proj is not None:
            H = self.proj(H)
        if return_raw:
            return H, state, raw
        return H, state

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.embed_dropout > 0):
            return self.embed(inputs)
        weight = self.embed.weight
        keep = 1.0 - self.embed_dropout
        mask = weight.new_empty((weight.shape[0], 1)).bernoulli_(keep) / keep
        return nn.functional.embedding(inputs, weight * mask)

    def _dropout(self, X: torch.Tensor) -> torch.Tensor:
        if not self.locked_dropout:
            return self.drop(X)
        if not self.training or self.dropout_rate <= 0:
            return X
        keep = 1.0 - self.dropout_rate
        mask = X.new_empty((X.shape[0], 1, X.shape[2])).bernoulli_(keep) / keep
        return X * mask

    def log_probs(self, H: torch.Tensor) -> torch.Tensor:
        """Full log distribution over the vocabulary.

        H (torch.Tensor): (n, out_width) hidden vectors.
        RETURNS (torch.Tensor): (n, vocab_size); masked rows are -inf.
        """
        n = self.n_words
        if self.softmax == "full":
            return torch.log_softmax(self._full_logits(H), dim=-1)
        with _full_precision(H):
            lp = self.out.log_prob(H.float())
        if n < self.vocab_size:
            # Renormalise over the words that exist.
            lp = lp.masked_fill(self._unused(lp), float("-inf"))
            lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        return lp

    def target_log_probs(self, H: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log probability of each target word.

        H (torch.Tensor): (n, out_width) hidden vectors.
        targets (torch.Tensor): (n,) word ids.
        RETURNS (torch.Tensor): (n,) natural-log probabilities.
        """
        if H.shape[0] == 0:
            return H.new_zeros((0,))
        if self.softmax == "adaptive" and self.n_words == self.vocab_size:
            # The cheap path: only the target's cluster is evaluated.
            with _full_precision(H):
                return self.out(H.float(), targets).output
        if self._fused(H) and not (torch.is_grad_enabled() and _any_grad(H, self.out)):
            return linear_target_log_probs(
                H, self.out.weight, self.out.bias, targets, self.n_words, self._loss_workspace
            )
        lp = self.log_probs(H)
        return lp.gather(1, targets.unsqueeze(1)).squeeze(1)

    def target_nll_sum(self, H: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log probability of the target words: the training
        loss, without the per-token scores.

        H (torch.Tensor): (n, out_width) hidden vectors.
        targets (torch.Tensor): (n,) word ids.
        RETURNS (torch.Tensor): 0-d float32 tensor.
        """
        if self.softmax != "full" or H.shape[0] == 0:
            return -self.target_log_probs(H, targets).sum()
        if self._fused(H):
            return linear_cross_entropy_sum(
                H, self.out.weight, self.out.bias, targets, self.n_words, self._loss_workspace
            )
        # One fused cross-entropy, as in ``nn.CrossEntropyLoss``: fewer
        # kernels than per-token scores gathered, negated and summed (each a
        # launch on a GPU); on CPU the two measured the same.
        return nn.functional.cross_entropy(self._full_logits(H), targets, reduction="sum")

    def _fused(self, H: torch.Tensor) -> bool:
        # CPU only: what it saves is the page faults of fresh buffers, which
        # a GPU's caching allocator never pays; there its few extra kernel
        # launches would only cost.
        # Not under autocast, whose bfloat16 product it would bypass, and not
        # for int8's quantised output layer.
        return (
            self.fused_loss
            and self.softmax == "full"
            and H.device.type == "cpu"
            and H.dtype == torch.float32
            and type(self.out) is nn.Linear
            and not cpu_autocast_enabled()
        )

    def _full_logits(self, H: torch.Tensor) -> torch.Tensor:
        # The product may run in half precision under autocast; the
        # normalisation is always taken in float32, over real words only.
        logits = self.out(H).float()
        if self.n_words < self.vocab_size:
            logits = logits.masked_fill(self._unused(logits), float("-inf"))
        return logits

    def _unused(self, scores: torch.Tensor) -> torch.Tensor:
        # Kept per (word count, device): rebuilding it cost two kernels per
        # softmax on a GPU.
        key = (self.n_words, scores.device)
        cached = self._unused_cache
        if cached is None or cached[0] != key:
            rows = torch.arange(self.vocab_size, device=scores.device)
            cached = (key, rows >= key[0])
            self._unused_cache = cached
        return cached[1].expand_as(scores)


def _any_grad(H: torch.Tensor, layer: nn.Module) -> bool:
    return H.requires_grad or any(p.requires_grad for p in layer.parameters())


def _full_precision(X: torch.Tensor):
    # Adaptive softmax normalises inside the module: keep it out of autocast.
    return torch.autocast(X.device.type, enabled=False)


def detach_state(state):
    """Cut the graph behind a recurrent state (tensor, tuple or list of them)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def select_state(state, rows: torch.Tensor):
    """Rows of a recurrent state (batch is dim 1 of every h / c tensor)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(1, rows)
    return type(state)(select_state(s, rows) for s in state)

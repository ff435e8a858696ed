"""The plain PyTorch side of ``textcat_bench.py``: ``rnn_textcat``'s default
model written as one ``nn.Module`` with a hand-written training loop, the
way a PyTorch user would write it, so the benchmark can say what spaCy,
Thinc and spacy-rnn cost over their engine.

Same work as ``rnn_textcat`` with ``DEFAULT_RNN_TEXTCAT_MODEL_CONFIG``:

* features: ``doc.to_array([NORM, PREFIX, SUFFIX, SHAPE])``, each column
  hashed to 4 rows with Thinc's MurmurHash (``ops.hash``, seeds 8-11 as in
  spaCy's ``MultiHashEmbed.v2``) and the rows summed (``embedding_bag``);
* the four 128-wide embeddings concatenated, a 3-piece Maxout to 128, layer
  norm, dropout;
* a BiLSTM of 2 x 64, exact for every doc length: ``pack_padded_sequence``
  (``packed = True``) or, like spaCy's ``TorchBiLSTMEncoder.v1``, over the
  zero-padded batch (``packed = False``: the right-to-left direction then
  reads the padding of shorter docs); ``cell = "gru"`` and ``depth`` give
  the other encoders ``spacy-rnn.RNNEncoder.v1`` builds (``nn.GRU``,
  ``num_layers``);
* mean pooling over each doc's tokens, or (``pooling = "attention"``)
  Thinc's ``ParametricAttention.v2`` and a sum: a learned query vector,
  a softmax over each doc's tokens of their dot products with it, the
  tokens weighted by it; then dropout, a linear layer and softmax,
  cross-entropy summed over the batch (the gradient spaCy's textcat passes
  to its Softmax layer: scores - truths);
* spaCy's default optimiser (Thinc's ``Adam()``) as torch ops: Adam with
  lr 0.001 and no L2, each parameter's gradient clipped to norm 1.0, and a
  moving average of the weights kept (``use_averages``); inference uses the
  raw weights, as ``nlp.pipe`` does after ``nlp.update`` in the benchmark.
"""
from typing import Dict, List, Sequence, Tuple

import numpy
import torch
from spacy.attrs import IDS
from thinc.api import NumpyOps
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

ATTRS = ("NORM", "PREFIX", "SUFFIX", "SHAPE")
ROWS = (5000, 1000, 2500, 2500)
SEEDS = (8, 9, 10, 11)
_ATTR_IDS = [IDS[a] for a in ATTRS]
_OPS = NumpyOps()
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("mean", "attention")


class PlainTextcat(nn.Module):
    def __init__(self, n_labels: int, width: int = 128, rows: Sequence[int] = ROWS,
                 pieces: int = 3, packed: bool = True, cell: str = "lstm", depth: int = 1,
                 pooling: str = "mean"):
        super().__init__()
        if cell not in CELLS or pooling not in POOLINGS:
            raise ValueError(f"cell must be one of {CELLS} and pooling one of {POOLINGS}, "
                             f"not {cell!r} and {pooling!r}")
        self.width = width
        self.pieces = pieces
        self.packed = packed
        self.pooling = pooling
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(r, width).uniform_(-0.1, 0.1)) for r in rows)
        self.maxout = nn.Linear(len(rows) * width, width * pieces)
        self.norm = nn.LayerNorm(width)
        self.rnn = CELLS[cell](width, width // 2, num_layers=depth, bidirectional=True,
                               batch_first=True)
        # Initialised as Thinc initialises ParametricAttention.v2's Q.
        self.query = (nn.Parameter(torch.empty(width).uniform_(-0.1, 0.1))
                      if pooling == "attention" else None)
        self.output = nn.Linear(width, n_labels)

    def forward(self, keys: List[torch.Tensor], lengths: torch.Tensor, drop: float) -> torch.Tensor:
        """keys: one (tokens, 4) tensor of hashed rows per attribute, the
        batch's docs one after another; lengths: tokens per doc (on the CPU).
        Returns the (docs, labels) logits."""
        embedded = torch.cat(
            [nn.functional.embedding_bag(k, table, mode="sum") for k, table in zip(keys, self.tables)],
            dim=1)
        hidden = self.maxout(embedded).view(-1, self.width, self.pieces).amax(dim=-1)
        hidden = nn.functional.dropout(self.norm(hidden), drop, self.training)
        padded = pad_sequence(hidden.split(lengths.tolist()), batch_first=True)
        mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths.to(padded.device)[:, None]
        if self.packed:
            packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
            encoded, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        else:
            encoded, _ = self.rnn(padded)
            encoded = encoded * mask[:, :, None]
        if self.pooling == "attention":
            pooled = attention_pool(encoded, mask, self.query)
        else:
            pooled = encoded.sum(dim=1) / lengths.to(encoded.device, encoded.dtype)[:, None]
        return self.output(nn.functional.dropout(pooled, drop, self.training))


def attention_pool(encoded: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """ParametricAttention.v2 then reduce_sum over a padded (docs, tokens,
    width) batch; mask is True on each doc's real tokens."""
    scores = (encoded @ query).masked_fill(~mask, float("-inf"))
    return (encoded * torch.softmax(scores, dim=1)[:, :, None]).sum(dim=1)


def featurize(docs, device) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Hashed embedding rows for each attribute and the doc lengths."""
    ids = numpy.concatenate([doc.to_array(_ATTR_IDS) for doc in docs]).astype("uint64")
    keys = []
    for column, (rows, seed) in enumerate(zip(ROWS, SEEDS)):
        hashed = _OPS.hash(numpy.ascontiguousarray(ids[:, column]), seed) % rows
        keys.append(torch.from_numpy(hashed.astype("int64")).to(device, non_blocking=True))
    lengths = torch.tensor([len(doc) for doc in docs], dtype=torch.int64)
    return keys, lengths


class PlainTrainer:
    """spaCy's default optimiser, in torch ops, for ``PlainTextcat``."""

    def __init__(self, model: PlainTextcat, lr: float = 0.001, weight_decay: float = 0.0,
                 grad_clip: float = 1.0):
        self.model = model
        self.params = list(model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=weight_decay, foreach=True)
        self.grad_clip = grad_clip
        self.averages = [p.detach().clone() for p in self.params]
        self.steps = 0

    def update(self, docs, labels: torch.Tensor, drop: float) -> torch.Tensor:
        device = self.params[0].device
        self.model.train()
        keys, lengths = featurize(docs, device)
        logits = self.model(keys, lengths, drop)
        loss = nn.functional.cross_entropy(logits, labels.to(device), reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.params:
            # Thinc's Adam clips each array on its own.
            torch.nn.utils.clip_grad_norm_(p, self.grad_clip)
        self.optimizer.step()
        self.steps += 1
        # Thinc's moving average: decay min(0.9999, (1 + t) / (10 + t)).
        decay = min(0.9999, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.averages, [p.detach() for p in self.params], 1.0 - decay)
        return loss.detach()

    def predict(self, docs) -> torch.Tensor:
        """Class probabilities. Like the spaCy models in ``textcat_bench.py``
        (``nlp.pipe`` after ``nlp.update``), from the raw weights: the
        averages are kept for the cost of keeping them."""
        device = self.params[0].device
        self.model.eval()
        with torch.inference_mode():
            keys, lengths = featurize(docs, device)
            return torch.softmax(self.model(keys, lengths, 0.0), dim=-1).cpu()


def plain_pipe(nlp, trainer: PlainTrainer, texts: Sequence[str], labels: Sequence[str],
               batch_size: int) -> list:
    """``nlp.pipe``'s work for a blank pipeline plus the plain classifier:
    tokenise with ``nlp``'s tokenizer, then score and set ``doc.cats`` in
    batches."""
    docs = []
    for start in range(0, len(texts), batch_size):
        batch = [nlp.make_doc(t) for t in texts[start:start + batch_size]]
        for doc, probs in zip(batch, trainer.predict(batch).tolist()):
            doc.cats = dict(zip(labels, probs))
        docs.extend(batch)
    return docs


def gold_labels(examples, labels: Sequence[str]) -> torch.Tensor:
    cats: List[Dict[str, float]] = [eg.reference.cats for eg in examples]
    return torch.tensor([labels.index(max(c, key=c.get)) for c in cats], dtype=torch.int64)

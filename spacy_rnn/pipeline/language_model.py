"""``rnn_lm``: a word-level recurrent language model as a trainable pipe.

Design notes:

* The torch module is built in the constructor from the component's config
  (``vocab_size`` rows), so a saved pipeline always has a module to load its
  weights into. The word vocabulary is filled at ``initialize`` from the
  training corpus, most frequent first, up to ``vocab_size`` entries
  (``<unk>`` and ``<eos>`` included) with at least ``min_count``
  occurrences. If the corpus has fewer types, the unused output rows are
  masked out of every distribution (a warning gives the exact size to set);
  if it has more, the rarest words map to ``<unk>``.
* Every token of a doc is predicted: the first from an ``<eos>`` context, as
  if the doc followed a line end.
* Truncated BPTT: docs are run in windows of ``bptt`` tokens; the recurrent
  state is carried across windows and detached at each boundary. With
  ``spacy-rnn.TokenStreamCorpus.v1`` the forward state is also carried across
  update calls, from chunk k of a stream column to chunk k+1. The backward
  stack of a bidirectional model starts fresh at the end of each doc (its
  context lies in the future, which the next batch has not delivered yet).
* Dropout comes from the component config (torch dropout); spaCy's
  ``training.dropout`` is not used.
* ``mixed_precision``: the forward pass runs under ``torch.autocast``
  (float16 on CUDA, with Thinc's ``PyTorchGradScaler`` scaling the loss;
  bfloat16 on CPU, where no scaling is needed). Weights and optimiser state
  stay float32, and log-probabilities are always taken in float32.
* ``cuda_graphs``: on a GPU, stream batches (equal lengths, one window) train
  through CUDA graphs replayed by ``torch_modules/graphed_windows.py``, and
  full evaluation windows are scored through them; a window the graphs cannot
  express runs eagerly, with the same result.
* ``fused_loss``: on CPU, the full softmax's output layer and cross-entropy
  run in one buffer the module keeps between windows
  (``torch_modules/fused_cross_entropy.py``), instead of four fresh buffers
  of (tokens, vocabulary) floats per window.
"""
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy
import srsly
import torch
from spacy import util
from spacy.attrs import LOWER, ORTH
from spacy.errors import Errors
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.strings import get_string_id
from spacy.tokens import Doc, Token
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, PyTorchGradScaler
from thinc.types import ArgsKwargs
from wasabi import msg

from ..corpus.token_stream import EOS, STREAM_KEY, UNK
from ..scorers import LM_SCORE_WEIGHTS
from ..layers.torch_shim import InPlacePyTorchShim
from ..serialization import deserialize_torch_module, serialize_torch_module
from ..torch_modules.graphed_windows import GraphedWindows
from ..torch_modules.language_model import RNNLanguageModel, detach_state
from ..torch_modules.transfer import HostScalar, to_device

DEFAULT_LM_CONFIG = """
[lm]
vocab_size = 10000
min_count = 1
lowercase = false
embed_width = 200
hidden_width = 200
depth = 2
cell = "lstm"
bidirectional = false
dropout = 0.2
tied = true
softmax = "full"
cutoffs = []
div_value = 4.0
init = "orthogonal"
bptt = 35
weight_drop = 0.0
locked_dropout = false
embed_dropout = 0.0
ar_alpha = 0.0
tar_beta = 0.0
init_vectors = false
mixed_precision = false
grad_scaler = null
int8 = false
cuda_graphs = true
fused_loss = true

[lm.scorer]
@scorers = "spacy_rnn.lm_scorer.v1"
"""
DEFAULT_LM = Config().from_str(DEFAULT_LM_CONFIG)["lm"]

# Show perplexity and loss in the training table (a weight of None would
# hide them) without letting them count: ``lm_score`` (1 / ppl) is the score.
LM_DEFAULT_SCORE_WEIGHTS = {
    key: (0.0 if value is None else value) for key, value in LM_SCORE_WEIGHTS.items()
}

# Settings that shape the torch module: they must not change after creation.
MODULE_SETTINGS = (
    "vocab_size", "embed_width", "hidden_width", "depth", "cell",
    "bidirectional", "dropout", "tied", "softmax", "cutoffs", "div_value", "init",
)
# Regularisers: they change training, not the module's shape.
# Decided by the config when the component is built, never by stored cfg.
CONSTRUCTOR_SETTINGS = ("int8", "mixed_precision", "cuda_graphs", "fused_loss")


def register_extensions() -> None:
    """Register the ``doc._`` / ``token._`` attributes the component sets
    (idempotent)."""
    for name in ("lm_logprob", "lm_perplexity", "lm_backward_logprob", "lm_surprisals"):
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=None)
    if not Token.has_extension("lm_surprisal"):
        Token.set_extension("lm_surprisal", getter=_token_surprisal)


def _same(a: Any, b: Any) -> bool:
    # JSON round trips can perturb floats in the last digit (0.3 reads back
    # as 0.30000000000000004).
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


def _to_numpy(array) -> numpy.ndarray:
    # Vectors live on the GPU (CuPy) when training there.
    return array.get() if hasattr(array, "get") else numpy.asarray(array)


def _token_surprisal(token: Token) -> Optional[float]:
    values = token.doc._.lm_surprisals
    if values is None or token.i >= len(values):
        return None
    return values[token.i]


@Language.factory(
    "rnn_lm",
    assigns=["doc._.lm_logprob", "doc._.lm_perplexity", "token._.lm_surprisal"],
    default_config=dict(DEFAULT_LM),
    default_score_weights=LM_DEFAULT_SCORE_WEIGHTS,
)
def make_rnn_lm(
    nlp: Language,
    name: str,
    vocab_size: int,
    min_count: int,
    lowercase: bool,
    embed_width: int,
    hidden_width: int,
    depth: int,
    cell: str,
    bidirectional: bool,
    dropout: float,
    tied: bool,
    softmax: str,
    cutoffs: List[int],
    div_value: float,
    init: str,
    bptt: int,
    scorer: Optional[Callable],
    weight_drop: float = 0.0,
    locked_dropout: bool = False,
    embed_dropout: float = 0.0,
    ar_alpha: float = 0.0,
    tar_beta: float = 0.0,
    init_vectors: bool = False,
    mixed_precision: bool = False,
    grad_scaler: Optional[PyTorchGradScaler] = None,
    int8: bool = False,
    cuda_graphs: bool = True,
    fused_loss: bool = True,
) -> "RNNLanguageModelPipe":
    """Create a recurrent word language model component.

    nlp (Language): The pipeline.
    name (str): The component instance name.
    vocab_size (int): Output rows, ``<unk>`` and ``<eos>`` included; the
        vocabulary built at initialize holds at most this many words.
    min_count (int): Minimum training-corpus count for a word to get its own row.
    lowercase (bool): Lowercase tokens before looking them up.
    embed_width (int): Word embedding width.
    hidden_width (int): Width of each recurrent layer.
    depth (int): Recurrent layers per direction.
    cell (str): "lstm", "gru", "rnn_tanh" or "rnn_relu".
    bidirectional (bool): Add a backward stack predicting the previous word.
    dropout (float): Dropout on embeddings, between layers and before the output.
    tied (bool): Share input and output embeddings.
    softmax (str): "full" or "adaptive".
    cutoffs (List[int]): Adaptive-softmax cluster boundaries.
    div_value (float): Adaptive-softmax width divisor per cluster.
    init (str): Recurrent weight initialisation scheme.
    bptt (int): Window length of truncated backpropagation through time.
    scorer (Optional[Callable]): The scoring method.
    weight_drop (float): DropConnect on the hidden-to-hidden weights.
    locked_dropout (bool): One dropout mask per stream for all time steps.
    embed_dropout (float): Rate at which whole words are dropped from the
        embedding matrix.
    ar_alpha (float): Activation regularisation: alpha * mean(h^2) on the
        dropped output of the last layer (Merity et al. 2018).
    tar_beta (float): Temporal activation regularisation:
        beta * mean((h_t - h_{t-1})^2) on the raw output of the last layer.
    init_vectors (bool): At initialize, copy the row of ``nlp.vocab.vectors``
        of each vocabulary word that has one (the word, else its lowercase
        form) into the input embedding; the width must be ``embed_width``.
    mixed_precision (bool): Run forward passes under autocast: float16 with
        loss scaling on CUDA, bfloat16 on CPU.
    grad_scaler (Optional[PyTorchGradScaler]): The loss scaler used on CUDA
        with mixed precision (default: Thinc's, with its default settings).
    int8 (bool): Inference only, on CPU: dynamically quantised int8 recurrent
        cells and output layer (set by ``python -m spacy_rnn quantize``).
    cuda_graphs (bool): On a GPU, replay windows as CUDA graphs (one launch
        instead of hundreds) where they apply: with the full softmax in
        float32, each training window of a stream batch (one window per
        batch; no weight drop, AR or TAR) and each full evaluation window.
        Elsewhere, and if capturing fails, windows run eagerly.
    fused_loss (bool): On CPU, with the full softmax in float32, compute the
        output layer and its cross-entropy in one buffer kept between
        windows, instead of torch's ``linear`` and ``cross_entropy`` (four
        fresh (tokens, vocabulary) buffers a window). Same values up to float
        rounding; no effect on a GPU or with the adaptive softmax.
    RETURNS (RNNLanguageModelPipe): The component.
    """
    cfg = dict(
        vocab_size=vocab_size, min_count=min_count, lowercase=lowercase,
        embed_width=embed_width, hidden_width=hidden_width, depth=depth,
        cell=cell, bidirectional=bidirectional, dropout=dropout, tied=tied,
        softmax=softmax, cutoffs=list(cutoffs), div_value=div_value, init=init,
        bptt=bptt, weight_drop=weight_drop, locked_dropout=locked_dropout,
        embed_dropout=embed_dropout, ar_alpha=ar_alpha, tar_beta=tar_beta,
        init_vectors=init_vectors, mixed_precision=mixed_precision, int8=int8,
        cuda_graphs=cuda_graphs, fused_loss=fused_loss,
    )
    model = build_lm_model(cfg, grad_scaler=grad_scaler)
    return RNNLanguageModelPipe(nlp.vocab, model, name, cfg=cfg, scorer=scorer)


def build_lm_model(
    cfg: Dict[str, Any], grad_scaler: Optional[PyTorchGradScaler] = None
) -> Model:
    """Wrap a freshly built ``RNNLanguageModel`` in a Thinc model whose shim
    stores its weights as safetensors.

    cfg (Dict[str, Any]): The component settings.
    grad_scaler (Optional[PyTorchGradScaler]): Loss scaler for mixed
        precision on CUDA; by default the shim makes one, enabled only there.
    RETURNS (Model): The Thinc model.
    """
    if cfg["bptt"] < 1:
        raise ValueError(f"rnn_lm: bptt must be at least 1, got {cfg['bptt']}")
    settings = dict(
        vocab_size=cfg["vocab_size"],
        embed_width=cfg["embed_width"],
        hidden_width=cfg["hidden_width"],
        depth=cfg["depth"],
        cell=cfg["cell"],
        bidirectional=cfg["bidirectional"],
        dropout=cfg["dropout"],
        tied=cfg["tied"],
        softmax=cfg["softmax"],
        cutoffs=cfg["cutoffs"],
        div_value=cfg["div_value"],
        init=cfg["init"],
        weight_drop=cfg.get("weight_drop", 0.0),
        locked_dropout=cfg.get("locked_dropout", False),
        embed_dropout=cfg.get("embed_dropout", 0.0),
        fused_loss=cfg.get("fused_loss", True),
    )
    module = RNNLanguageModel(**settings)
    if cfg.get("int8"):
        from ..compression.int8_lm import int8_serializers, quantize_lm

        # int8 kernels are CPU-only; the component feeds the module on its
        # own device, so the whole model stays on the CPU.
        shim = InPlacePyTorchShim(
            quantize_lm(module, settings), device=torch.device("cpu"), **int8_serializers()
        )
        return Model("rnn_lm_int8", _shim_forward, shims=[shim])
    # In-place optimiser steps: Thinc's own shim grows by one copy of the
    # weights per step (spacy_rnn/layers/torch_shim.py).
    shim = InPlacePyTorchShim(
        module,
        mixed_precision=bool(cfg.get("mixed_precision", False)),
        grad_scaler=grad_scaler,
        serialize_model=serialize_torch_module,
        deserialize_model=deserialize_torch_module,
    )
    return Model("rnn_lm", _shim_forward, shims=[shim])


def _shim_forward(model: Model, X: ArgsKwargs, is_train: bool):
    # The component drives the torch module directly (truncated BPTT needs
    # a backward pass per window); this keeps Model.__call__ usable.
    return model.shims[0](X, is_train)


class RNNLanguageModelPipe(TrainablePipe):
    """Recurrent language model: sets ``doc._.lm_logprob`` (sum of natural-log
    token probabilities), ``doc._.lm_perplexity`` and ``token._.lm_surprisal``
    (``-log p`` in nats); bidirectional models also set
    ``doc._.lm_backward_logprob``.
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "rnn_lm",
        *,
        cfg: Dict[str, Any],
        scorer: Optional[Callable] = None,
    ):
        """Initialise the component.

        vocab (Vocab): The shared vocabulary.
        model (Model): Thinc model holding the ``RNNLanguageModel`` shim.
        name (str): The component instance name.
        cfg (Dict[str, Any]): Settings (see ``make_rnn_lm``).
        scorer (Optional[Callable]): The scoring method.
        """
        register_extensions()
        self.vocab = vocab
        self.model = model
        self.name = name
        self.cfg = dict(cfg)
        self.cfg.setdefault("n_words", 2)
        self.scorer = scorer
        self.words: List[str] = [UNK, EOS]
        self._ids: Dict[str, int] = {}
        self._stream_state: Optional[Dict[str, Any]] = None
        self._graphs = GraphedWindows()
        self._index_words()

    # -- properties --------------------------------------------------------

    @property
    def module(self) -> RNNLanguageModel:
        """RNNLanguageModel: The torch module."""
        return self.model.shims[0]._model

    @property
    def bidirectional(self) -> bool:
        return bool(self.cfg["bidirectional"])

    # -- the TrainablePipe API ---------------------------------------------

    def predict(self, docs: Iterable[Doc]) -> Dict[str, List[numpy.ndarray]]:
        """Score every token of every doc.

        docs (Iterable[Doc]): The docs.
        RETURNS (Dict[str, List[numpy.ndarray]]): "fwd" (and "bwd" for
            bidirectional models): per doc, the natural-log probability of
            each token, in doc order.
        """
        docs = list(docs)
        seqs = self._docs_ids(docs)
        module = self.module
        module.eval()
        with torch.no_grad():
            scores = {"fwd": self._score(seqs, "fwd", train=False)[0]}
            if self.bidirectional:
                scores["bwd"] = self._score(seqs, "bwd", train=False)[0]
        return scores

    def set_annotations(self, docs: Iterable[Doc], scores: Dict[str, List[numpy.ndarray]]) -> None:
        """Write the scores to the docs.

        docs (Iterable[Doc]): The docs.
        scores (Dict[str, List[numpy.ndarray]]): Output of ``predict``.
        """
        for i, doc in enumerate(docs):
            lp = scores["fwd"][i]
            total = float(lp.sum())
            doc._.lm_logprob = total
            doc._.lm_perplexity = math.exp(-total / len(lp)) if len(lp) else None
            doc._.lm_surprisals = [float(-x) for x in lp]
            if "bwd" in scores:
                doc._.lm_backward_logprob = float(scores["bwd"][i].sum())

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Callable] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Learn from a batch with truncated BPTT: gradients are accumulated
        window by window (one backward pass per window), then one optimiser
        step is taken if ``sgd`` is given.

        examples (Iterable[Example]): The batch; the predicted docs' tokens
            are the training text.
        drop (float): Unused: dropout is set in the component config.
        sgd (Optional[Callable]): An optimizer; the caller steps it otherwise.
        losses (Optional[Dict[str, float]]): Running losses, updated in place
            with the batch's mean negative log-likelihood per token.
        RETURNS (Dict[str, float]): The updated losses.
        """
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        if self.cfg.get("int8"):
            raise ValueError(
                f"rnn_lm '{self.name}' has int8 weights, which are for inference "
                f"only. Train or fine-tune the float pipeline and run `python -m "
                f"spacy_rnn quantize` again."
            )
        examples = list(examples)
        validate_examples(examples, "RNNLanguageModelPipe.update")
        docs = [eg.predicted for eg in examples]
        seqs = self._docs_ids(docs)
        n_tokens = sum(len(s) for s in seqs)
        if n_tokens == 0:
            return losses
        module = self.module
        if not module.training:
            # train() walks every submodule; once is enough.
            module.train()
        n_dirs = 2 if self.bidirectional else 1
        state, first = self._continued_state(docs, seqs)
        norm = float(n_tokens * n_dirs)
        _, last_state, readings = self._score(
            seqs, "fwd", train=True, state=state, first=first, norm=norm
        )
        self._remember_state(docs, seqs, last_state)
        if self.bidirectional:
            readings += self._score(seqs, "bwd", train=True, norm=norm)[2]
        if sgd is not None:
            self.finish_update(sgd)
        # Read after the backward passes (and the optimiser step, when this
        # call takes it) are queued: each reading waits only for its own
        # window's forward kernels, so the GPU is never drained here.
        losses[self.name] += sum(float(r) for r in readings)
        return losses

    def get_loss(self, examples: Iterable[Example], scores: Dict[str, List[numpy.ndarray]]):
        """Mean negative log-likelihood per token of ``predict``'s output.

        The gradient is computed by torch inside ``update``, so none is
        returned here.

        examples (Iterable[Example]): The batch (unused beyond validation).
        scores (Dict[str, List[numpy.ndarray]]): Output of ``predict``.
        RETURNS (Tuple[float, None]): The loss and no gradient.
        """
        validate_examples(list(examples), "RNNLanguageModelPipe.get_loss")
        total = 0.0
        n = 0
        for direction in scores:
            for lp in scores[direction]:
                total -= float(lp.sum())
                n += len(lp)
        return (total / n if n else 0.0), None

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        vocab_path: Optional[str] = None,
    ) -> None:
        """Build the word vocabulary from the training corpus.

        get_examples (Callable[[], Iterable[Example]]): Returns the training
            examples; their predicted docs' tokens are counted.
        nlp (Optional[Language]): The pipeline.
        vocab_path (Optional[str]): Count this corpus instead (a token file,
            or a ``.spacy`` file / folder). Set it when training with
            ``max_epochs = -1``: spaCy then passes only the first 100
            examples to ``initialize``.
        """
        validate_get_examples(get_examples, "RNNLanguageModelPipe.initialize")
        counts: Counter = Counter()
        if vocab_path:
            from ..corpus.token_stream import read_stream

            counts.update(self._norm(t) for t in read_stream(vocab_path))
        else:
            for eg in get_examples():
                counts.update(self._norm(t.text) for t in eg.predicted)
        if not counts:
            raise ValueError(
                f"rnn_lm '{self.name}': the training corpus has no tokens to "
                f"build a vocabulary from"
            )
        self.set_words(self.build_vocabulary(counts))
        if self.cfg.get("init_vectors"):
            self.init_embeddings_from_vectors()

    def init_embeddings_from_vectors(self) -> int:
        """Copy ``self.vocab.vectors`` rows into the input embedding for the
        vocabulary words that have a vector (the word, else its lowercase
        form); other rows keep their initialisation.

        RETURNS (int): The number of rows copied.
        """
        vectors = self.vocab.vectors
        width = int(self.cfg["embed_width"])
        if vectors.size == 0 or vectors.shape[0] == 0 or (
            vectors.mode == "default" and len(vectors.key2row) == 0
        ):
            raise ValueError(
                f"rnn_lm '{self.name}': init_vectors = true but the pipeline has no "
                f"word vectors; add them with [initialize] vectors (a pipeline made "
                f"by `spacy init vectors`) or set init_vectors = false"
            )
        if vectors.shape[1] != width:
            raise ValueError(
                f"rnn_lm '{self.name}': init_vectors needs vectors as wide as the "
                f"embedding (embed_width = {width}), but the vectors have width "
                f"{vectors.shape[1]}; set embed_width = {vectors.shape[1]}"
            )
        rows: List[int] = []
        values: List[numpy.ndarray] = []
        for i, word in enumerate(self.words):
            if word in (UNK, EOS):
                continue
            for form in (word, word.lower()):
                if form in self.vocab.strings and self.vocab.has_vector(form):
                    rows.append(i)
                    values.append(_to_numpy(self.vocab.get_vector(form)))
                    break
        if rows:
            weight = self.module.embed.weight
            with torch.no_grad():
                weight[torch.as_tensor(rows, device=weight.device)] = torch.as_tensor(
                    numpy.stack(values), dtype=weight.dtype, device=weight.device
                )
        self.cfg["vectors_rows"] = len(rows)
        msg.info(
            f"rnn_lm '{self.name}': {len(rows)} of {len(self.words)} embedding rows "
            f"initialised from the vectors"
        )
        return len(rows)

    def use_params(self, params: dict):
        """Swap in averaged weights (generator, as spaCy's pipes use it).

        Thinc's PyTorchShim.use_params ignores Thinc's ``(id, name)``
        averages and loads its own ``"pytorch_{id}_{name}"`` keys with a
        strict state-dict load, which this module (tied weight, buffer)
        fails. The weights found under the shim's keys (written by
        ``spacy_rnn.NTASGD.v1``) are copied in place here instead.

        params (dict): Parameter values, e.g. ``optimizer.averages``.
        """
        from ..optimization.ntasgd import swap_torch_params

        with swap_torch_params(self.model.shims[0], params):
            yield

    # -- vocabulary ----------------------------------------------------------

    def build_vocabulary(self, counts: Counter) -> List[str]:
        """Most frequent words first, ``<unk>`` and ``<eos>`` at rows 0 and 1.

        counts (Counter): Token counts.
        RETURNS (List[str]): At most ``vocab_size`` words.
        """
        specials = [UNK, EOS]
        room = self.cfg["vocab_size"] - len(specials)
        ranked = sorted(
            (w for w, c in counts.items() if c >= self.cfg["min_count"] and w not in specials),
            key=lambda w: (-counts[w], w),
        )
        n_types = len(ranked) + len(specials)
        words = specials + ranked[:room]
        if n_types < self.cfg["vocab_size"]:
            msg.warn(
                f"rnn_lm '{self.name}': the corpus has {n_types} word types "
                f"(with <unk>, <eos>) but vocab_size is {self.cfg['vocab_size']}; "
                f"the spare output rows are masked. Set vocab_size = {n_types} "
                f"to save memory and time."
            )
        return words

    def set_words(self, words: Sequence[str]) -> None:
        """Install a vocabulary (row i predicts ``words[i]``).

        words (Sequence[str]): ``<unk>``, ``<eos>``, then the words.
        """
        words = list(words)
        if words[:2] != [UNK, EOS] or len(words) > self.cfg["vocab_size"]:
            raise ValueError(
                f"rnn_lm '{self.name}': a vocabulary must start with {UNK}, {EOS} "
                f"and have at most vocab_size = {self.cfg['vocab_size']} words; "
                f"got {len(words)} starting {words[:2]}"
            )
        self.words = words
        self.cfg["n_words"] = len(words)
        self.module.set_n_active(len(words))
        self._index_words()

    def doc_ids(self, doc: Doc) -> numpy.ndarray:
        """Word ids of a doc's tokens (unknown words get ``<unk>``'s id).

        doc (Doc): The doc.
        RETURNS (numpy.ndarray): int64 ids, one per token.
        """
        return self._docs_ids([doc])[0]

    def _docs_ids(self, docs: Sequence[Doc]) -> List[numpy.ndarray]:
        # Vectorised over the docs' hashed strings, one lookup for the whole
        # batch rather than one per doc: Token objects and a Python lookup
        # cost ~3 ms per 700-token training batch.
        attr = LOWER if self.cfg.get("lowercase") else ORTH
        lengths = [len(doc) for doc in docs]
        if not sum(lengths):
            return [numpy.zeros((0,), dtype="int64") for _ in docs]
        hashes = numpy.concatenate(
            [doc.to_array(attr).reshape(-1) for doc, n in zip(docs, lengths) if n]
        )
        keys, values = self._hash_index
        pos = numpy.minimum(numpy.searchsorted(keys, hashes), len(keys) - 1)
        ids = numpy.where(keys[pos] == hashes, values[pos], self._ids[UNK]).astype("int64")
        if len(set(lengths)) == 1:
            # Rows of one array: numpy.split loops in Python.
            return list(ids.reshape(len(docs), lengths[0]))
        return numpy.split(ids, numpy.cumsum(lengths)[:-1])

    def ids_of(self, words: Iterable[str]) -> numpy.ndarray:
        get = self._ids.get
        return numpy.fromiter((get(self._norm(w), 0) for w in words), dtype="int64")

    def _norm(self, word: str) -> str:
        return word.lower() if self.cfg.get("lowercase") and word not in (UNK, EOS) else word

    def _index_words(self) -> None:
        self._ids = {w: i for i, w in enumerate(self.words)}
        hashes = numpy.asarray([get_string_id(w) for w in self.words], dtype="uint64")
        order = numpy.argsort(hashes)
        self._hash_index = (hashes[order], order.astype("int64"))

    def predict_distributions(self, doc: Doc, direction: str = "fwd") -> numpy.ndarray:
        """Full log distribution behind each token's prediction.

        doc (Doc): The doc.
        direction (str): "fwd" (row i: next-word distribution given tokens
            before i) or "bwd" (row i: distribution given tokens after i).
        RETURNS (numpy.ndarray): (len(doc), vocab_size) natural-log
            probabilities; column j is the word ``self.words[j]``.
        """
        seq = self.doc_ids(doc)
        if not len(seq):
            return numpy.zeros((0, self.cfg["vocab_size"]), dtype="float32")
        module = self.module
        module.eval()
        chunks: List[numpy.ndarray] = []
        with torch.no_grad():
            self._score([seq], direction, train=False, distributions=chunks)
        rows = numpy.concatenate(chunks, axis=1)[0]
        return rows[::-1].copy() if direction == "bwd" else rows

    # -- evaluation -----------------------------------------------------------

    def evaluate_stream(
        self, tokens: Sequence[str], batch_size: int = 10, bptt: Optional[int] = None
    ) -> Dict[str, Any]:
        """Standard-protocol scores of one token stream.

        The stream is dealt into ``batch_size`` contiguous columns (lengths
        differ by at most one, nothing dropped); each column is read in
        windows of ``bptt`` with the state carried across windows. Every
        token is predicted once, the first of each column from an ``<eos>``
        context and a zero state.

        tokens (Sequence[str]): The stream, ``<eos>`` tokens included.
        batch_size (int): Parallel columns.
        bptt (Optional[int]): Window length (default: the component's).
        RETURNS (Dict[str, Any]): ``tokens``, ``nll`` (mean per token, natural
            log), ``perplexity``, ``oov`` (tokens scored as ``<unk>``), and
            ``backward_nll`` / ``backward_perplexity`` when bidirectional.
        """
        from ..corpus.token_stream import split_columns

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        columns = split_columns(list(tokens), batch_size)
        seqs = [self.ids_of(col) for col in columns]
        n = int(sum(len(s) for s in seqs))
        result: Dict[str, Any] = {"tokens": n}
        if n == 0:
            raise ValueError("evaluate_stream: the stream has no tokens")
        module = self.module
        module.eval()
        directions = ["fwd", "bwd"] if self.bidirectional else ["fwd"]
        with torch.no_grad():
            for direction in directions:
                lps = self._score(seqs, direction, train=False, bptt=bptt)[0]
                nll = -float(sum(float(lp.astype("float64").sum()) for lp in lps)) / n
                prefix = "" if direction == "fwd" else "backward_"
                result[prefix + "nll"] = nll
                result[prefix + "perplexity"] = math.exp(nll) if nll < 700 else float("inf")
        unk = self._ids[UNK]
        result["oov"] = int(sum(int(((s == unk)).sum()) for s in seqs)) - sum(
            1 for col in columns for t in col if t == UNK
        )
        result.update(
            batch_size=len(columns), bptt=int(bptt or self.cfg["bptt"]), vocab_size=len(self.words)
        )
        return result

    # -- generation -----------------------------------------------------------

    def generate(
        self,
        prompt: Union[str, Doc, Sequence[str]] = "",
        n_tokens: int = 20,
        temperature: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> List[str]:
        """Sample a continuation with the forward model.

        prompt (Union[str, Doc, Sequence[str]]): Text to continue (a string is
            split on whitespace); the context starts after an ``<eos>``.
        n_tokens (int): Tokens to sample.
        temperature (float): Softmax temperature (> 0).
        top_k (int): Sample among the k most likely words only (0: all).
        seed (int): Seed of the sampler: the same seed gives the same output.
        RETURNS (List[str]): The sampled tokens.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if isinstance(prompt, str):
            words = prompt.split()
        else:
            words = [t.text if isinstance(t, Token) else str(t) for t in prompt]
        module = self.module
        module.eval()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        ids = [self._ids[EOS]] + list(self.ids_of(words))
        out: List[str] = []
        with torch.no_grad(), self._autocast():
            H, state = module.run("fwd", torch.as_tensor([ids], device=module.device))
            h = H[0, -1:]
            for _ in range(n_tokens):
                lp = module.log_probs(h)[0].float().cpu() / temperature
                if top_k and top_k < lp.shape[0]:
                    kth = torch.topk(lp, top_k).values[-1]
                    lp = lp.masked_fill(lp < kth, float("-inf"))
                next_id = int(torch.multinomial(torch.softmax(lp, -1), 1, generator=gen))
                out.append(self.words[next_id] if next_id < len(self.words) else UNK)
                step = torch.as_tensor([[next_id]], device=module.device)
                H, state = module.run("fwd", step, state)
                h = H[0, -1:]
        return out

    # -- serialisation ------------------------------------------------------

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialise the component, its word vocabulary and weights.

        exclude (Iterable[str]): String names of fields to exclude.
        RETURNS (bytes): The serialised component.
        """
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
            "vocab": lambda: self.vocab.to_bytes(exclude=exclude),
            "lm_words": lambda: srsly.json_dumps(self.words),
            "model": lambda: self.model.to_bytes(),
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "RNNLanguageModelPipe":
        """Load the component from bytes.

        bytes_data (bytes): Data from ``to_bytes``.
        exclude (Iterable[str]): String names of fields to exclude.
        RETURNS (RNNLanguageModelPipe): The component.
        """
        deserialize = {
            "cfg": lambda b: self._load_cfg(srsly.json_loads(b)),
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "lm_words": lambda b: self._load_words(srsly.json_loads(b)),
            "model": lambda b: self._load_model(lambda: self.model.from_bytes(b)),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Save the component to a directory.

        path (Union[str, Path]): The directory.
        exclude (Iterable[str]): String names of fields to exclude.
        """
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            "lm_words": lambda p: srsly.write_json(p, self.words),
            "model": lambda p: self.model.to_disk(p),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "RNNLanguageModelPipe":
        """Load the component from a directory.

        path (Union[str, Path]): The directory.
        exclude (Iterable[str]): String names of fields to exclude.
        RETURNS (RNNLanguageModelPipe): The component.
        """

        def load_model(p):
            with Path(p).open("rb") as f:
                data = f.read()
            self._load_model(lambda: self.model.from_bytes(data))

        deserialize = {
            "cfg": lambda p: self._load_cfg(srsly.read_json(p)),
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "lm_words": lambda p: self._load_words(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self

    def _load_cfg(self, cfg: Dict[str, Any]) -> None:
        # How the module was built (int8, autocast) is the config's call: a
        # float pipeline's stored cfg is loaded into its int8 copy.
        cfg = {k: v for k, v in cfg.items() if k not in CONSTRUCTOR_SETTINGS}
        changed = [k for k in MODULE_SETTINGS if k in cfg and not _same(cfg[k], self.cfg.get(k))]
        if changed:
            raise ValueError(
                f"rnn_lm '{self.name}': the stored component was built with "
                f"different settings ({', '.join(changed)}) than the config; "
                f"the weights would not fit"
            )
        self.cfg.update(cfg)

    def _load_words(self, words: List[str]) -> None:
        self.words = list(words)
        self._index_words()

    def _load_model(self, load: Callable[[], Any]) -> None:
        try:
            load()
        except AttributeError:
            raise ValueError(Errors.E149) from None
        self._stream_state = None
        self._graphs.clear()

    # -- internals -----------------------------------------------------------

    def _score(
        self,
        seqs: List[numpy.ndarray],
        direction: str,
        *,
        train: bool,
        state=None,
        first: Optional[List[int]] = None,
        norm: float = 1.0,
        bptt: Optional[int] = None,
        distributions: Optional[List[numpy.ndarray]] = None,
    ):
        """Run one direction over a batch of id sequences, window by window.

        Returns the per-doc log probabilities (doc order; None when training
        without ``distributions``, where nobody reads them), the recurrent
        state after the last window, and (when training) each window's loss /
        norm on its way to the host, after backpropagating it.
        """
        eos = self._ids[EOS]
        module = self.module
        device = module.device
        lengths = numpy.asarray([len(s) for s in seqs], dtype="int64")
        B = len(seqs)
        T = int(lengths.max()) if B else 0
        # Training needs the loss only (``update`` drops the scores): no
        # per-window copy back to the host then, and no per-doc arrays.
        keep_scores = not train or distributions is not None
        if T == 0:
            return [numpy.zeros((n,), dtype="float32") for n in lengths], state, []
        if (lengths == T).all():
            # Equal lengths (every stream batch): whole-batch array ops
            # instead of a Python loop over the docs.
            targets = numpy.stack(seqs)
            if direction == "bwd":
                targets = numpy.ascontiguousarray(targets[:, ::-1])
            inputs = numpy.empty_like(targets)
            inputs[:, 1:] = targets[:, :-1]
            inputs[:, 0] = eos if first is None else first
        else:
            targets = numpy.zeros((B, T), dtype="int64")
            inputs = numpy.full((B, T), eos, dtype="int64")
            for b, seq in enumerate(seqs):
                if not len(seq):
                    continue
                if direction == "bwd":
                    # Reverse inside the doc's own length, so padding trails
                    # and the backward stack reads (and predicts) right to left.
                    seq = seq[::-1]
                targets[b, : len(seq)] = seq
                inputs[b, 1 : len(seq)] = seq[:-1]
                if first is not None:
                    inputs[b, 0] = first[b]
        mask = numpy.arange(T)[None, :] < lengths[:, None]
        lp_all = numpy.zeros((B, T), dtype="float32") if keep_scores else None
        # Indices go to the GPU without waiting for it, and padding is dropped
        # by integer rows computed here: a boolean mask index or a blocking
        # copy would each stall the GPU pipeline once per window.
        inputs_t = to_device(inputs, device)
        targets_t = to_device(targets, device)
        bptt = int(bptt or self.cfg["bptt"])
        # On a GPU, scores stay on the device until every window is queued:
        # one copy to the host (one wait) per call instead of one per window.
        # On CPU each window's are copied out at once: keeping the small
        # tensors alive between the windows' large softmax buffers made the
        # allocator fault fresh pages in for every window (0.9 s instead of
        # 0.68 s per 20k-token evaluation at 10k words).
        kept = []
        readings: List[HostScalar] = []
        shim = self.model.shims[0]
        replays = self._graphs.applies_to(device)
        graphs = self._graphs if (
            replays and train and not keep_scores and T <= bptt
            and bool(mask.all()) and self._graphs_apply(train=True)
        ) else None
        scoring_graphs = self._graphs if (
            replays and not train and distributions is None
            and self._graphs_apply(train=False)
        ) else None
        for start in range(0, T, bptt):
            end = min(T, start + bptt)
            window = mask[:, start:end]
            if graphs is not None:
                replayed = graphs.step(
                    module, direction, inputs_t, targets_t, state, norm
                )
                if replayed is not None:
                    loss, state = replayed
                    readings.append(HostScalar(loss))
                    shim.backward(loss)
                    continue
            if scoring_graphs is not None and window.all():
                scored = scoring_graphs.score(
                    module, direction, inputs_t[:, start:end], targets_t[:, start:end], state
                )
                if scored is not None:
                    lp, state = scored
                    kept.append((start, end, window, lp))
                    continue
            rows = None if window.all() else to_device(numpy.flatnonzero(window), device)
            with self._autocast():
                H, state, raw = module.run(
                    direction, inputs_t[:, start:end], state, return_raw=True
                )
                H_flat = H.reshape(-1, H.shape[-1])
                Y = targets_t[:, start:end].reshape(-1)
                if rows is not None:
                    H_flat, Y = H_flat.index_select(0, rows), Y.index_select(0, rows)
                if keep_scores:
                    lp = module.target_log_probs(H_flat, Y)
                if train:
                    nll = -lp.sum() if keep_scores else module.target_nll_sum(H_flat, Y)
                    loss = nll / norm
                    penalty = self._activation_penalty(H, raw, window, rows, norm)
                    if isinstance(penalty, torch.Tensor):
                        loss = loss + penalty
            if train:
                # Queued before the backward pass, so reading it later waits
                # for this window's forward kernels only.
                readings.append(HostScalar(loss))
                # Outside autocast, as torch.amp asks.
                shim.backward(loss)
            if keep_scores:
                if device.type == "cpu":
                    lp_all[:, start:end][window] = lp.detach().float().numpy()
                else:
                    kept.append((start, end, window, lp.detach()))
            if distributions is not None:
                with self._autocast():
                    dist = module.log_probs(H.reshape(-1, H.shape[-1]))
                distributions.append(dist.detach().float().cpu().reshape(B, end - start, -1).numpy())
            state = detach_state(state)
        if kept:
            flat = torch.cat([lp for *_, lp in kept]).float().cpu().numpy()
            offset = 0
            for start, end, window, lp in kept:
                lp_all[:, start:end][window] = flat[offset : offset + len(lp)]
                offset += len(lp)
        if not keep_scores:
            return None, state, readings
        out = []
        for b in range(B):
            row = lp_all[b, : lengths[b]]
            out.append(row[::-1].copy() if direction == "bwd" else row.copy())
        return out, state, readings

    def _graphs_apply(self, train: bool = True) -> bool:
        # What a captured window cannot do: autocast and loss scaling, the
        # adaptive softmax's data-dependent cluster selection, and in
        # training weight drop's per-call weight swap and AR / TAR's
        # host-side token counts.
        cfg = self.cfg
        if not (
            bool(cfg.get("cuda_graphs", True))
            and not self.model.shims[0].wants_mixed_precision
            and cfg["softmax"] == "full"
        ):
            return False
        return not train or (
            float(cfg.get("weight_drop", 0.0)) <= 0
            and float(cfg.get("ar_alpha", 0.0)) <= 0
            and float(cfg.get("tar_beta", 0.0)) <= 0
        )

    def _autocast(self):
        # The shim decides (float16 on CUDA, bfloat16 on CPU, or none).
        return self.model.shims[0].autocast()

    def _activation_penalty(self, H, raw, window: numpy.ndarray, rows, norm: float):
        # AR and TAR (Merity et al. 2018), weighted by this window's share of
        # the batch's tokens so that they scale like the NLL term. ``window``
        # is the host mask of real tokens, ``rows`` their flat indices (None:
        # all of them).
        alpha = float(self.cfg.get("ar_alpha", 0.0))
        beta = float(self.cfg.get("tar_beta", 0.0))
        if alpha <= 0 and beta <= 0:
            return 0.0  # the default: no per-window count on the hot path
        n = int(window.sum())
        if n == 0:
            return 0.0
        share = n / norm
        penalty = 0.0
        if alpha > 0:
            H_flat = H.reshape(-1, H.shape[-1])
            if rows is not None:
                H_flat = H_flat.index_select(0, rows)
            penalty = penalty + alpha * H_flat.float().pow(2).mean() * share
        if beta > 0 and raw.shape[1] > 1:
            both = window[:, 1:] & window[:, :-1]
            if both.any():
                diff = (raw[:, 1:].float() - raw[:, :-1].float()).reshape(-1, raw.shape[-1])
                if not both.all():
                    diff = diff.index_select(0, to_device(numpy.flatnonzero(both), raw.device))
                penalty = penalty + beta * diff.pow(2).mean() * share
        return penalty

    def _continued_state(self, docs: List[Doc], seqs: List[numpy.ndarray]):
        """State and first inputs carried over from the previous update, when
        this batch is the next chunk of the same stream columns."""
        cached = self._stream_state
        keys = [doc.user_data.get(STREAM_KEY) for doc in docs]
        if cached is None or any(k is None for k in keys):
            return None, None
        columns = [k[0] for k in keys]
        if columns != cached["columns"] or any(k[1] != cached["chunk"] + 1 for k in keys):
            return None, None
        return cached["state"], cached["last"]

    def _remember_state(self, docs: List[Doc], seqs: List[numpy.ndarray], state) -> None:
        keys = [doc.user_data.get(STREAM_KEY) for doc in docs]
        lengths = {len(s) for s in seqs}
        # A padded batch ends at different positions per row: its final state
        # belongs to no row's last token, so it cannot be carried.
        if any(k is None for k in keys) or len(lengths) != 1 or len({k[1] for k in keys}) != 1:
            self._stream_state = None
            return
        self._stream_state = {
            "columns": [k[0] for k in keys],
            "chunk": keys[0][1],
            "state": detach_state(state),
            "last": [int(s[-1]) for s in seqs],
        }

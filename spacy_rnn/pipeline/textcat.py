"""``rnn_textcat`` and ``rnn_textcat_multilabel``: spaCy's own text
categorisers with a recurrent model as their default.

spaCy's ``TextCategorizer`` and ``MultiLabel_TextCategorizer`` do labels,
losses, scoring and serialisation. The thin subclasses here add one check:
spaCy silently ignores a gold label in ``update`` that the component was not
initialised with (the model never learns it, and nothing says so); ours
raise a ``ValueError`` that names the label, the known labels and the doc.
They also copy a batch's scores off the GPU in one transfer.
"""
from typing import Callable, Dict, Iterable, List, Optional

from spacy.language import Language
from spacy.pipeline.textcat import TextCategorizer
from spacy.pipeline.textcat_multilabel import MultiLabel_TextCategorizer
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Config, Model, Optimizer
from thinc.types import Floats2d

DEFAULT_RNN_TEXTCAT_MODEL_CONFIG = """
[model]
@architectures = "spacy-rnn.TextCatRNN.v1"
exclusive_classes = true
pooling = "mean"
dropout = 0.0
nO = null

[model.tok2vec]
@architectures = "spacy.Tok2Vec.v2"

[model.tok2vec.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 128
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [5000, 1000, 2500, 2500]
include_static_vectors = false

[model.tok2vec.encode]
@architectures = "spacy-rnn.RNNEncoder.v1"
width = 128
depth = 1
cell = "lstm"
bidirectional = true
dropout = 0.0
residual = false
layer_norm = false
init = "orthogonal"
"""
DEFAULT_RNN_TEXTCAT_MODEL = Config().from_str(DEFAULT_RNN_TEXTCAT_MODEL_CONFIG)["model"]

DEFAULT_RNN_TEXTCAT_MULTILABEL_MODEL = Config().from_str(
    DEFAULT_RNN_TEXTCAT_MODEL_CONFIG.replace(
        "exclusive_classes = true", "exclusive_classes = false"
    )
)["model"]

class UnknownLabelError(ValueError):
    """A gold ``doc.cats`` label that the component was not initialised with."""


def check_known_labels(component, examples: Iterable[Example]) -> None:
    """Raise ``UnknownLabelError`` if any reference doc has a category that
    ``component`` does not know, naming the first such doc.

    component: A text categoriser (anything with ``labels`` and ``name``).
    examples (Iterable[Example]): The batch, as given to ``update``.
    """
    known = set(component.labels)
    for i, eg in enumerate(examples):
        unknown = [label for label in eg.reference.cats if label not in known]
        if not unknown:
            continue
        text = eg.reference.text
        snippet = text[:50] + ("..." if len(text) > 50 else "")
        raise UnknownLabelError(
            f"Component '{component.name}' ({type(component).__name__}): the gold "
            f"doc.cats of doc {i} in the batch ({snippet!r}) has label(s) "
            f"{', '.join(repr(u) for u in sorted(unknown))} that the component was "
            f"not initialised with; known labels: "
            f"{', '.join(repr(k) for k in component.labels) or '(none)'}. spaCy would "
            f"silently ignore them. Add the label before initialize "
            f"(nlp.get_pipe('{component.name}').add_label(...), or "
            f"[initialize.components.{component.name}.labels] in the config), or "
            f"include it in the training data that initialize reads."
        )


class _KnownLabelsOnly:
    """Mixin for spaCy's text categorisers: refuse gold labels the component
    was not initialised with, where spaCy would silently skip them."""

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """spaCy's ``update``, after checking every gold label is known.

        examples (Iterable[Example]): The batch.
        drop (float): Dropout rate.
        sgd (Optional[Optimizer]): The optimizer, if the step is taken here.
        losses (Optional[Dict[str, float]]): Running losses, updated in place.
        RETURNS (Dict[str, float]): The updated losses.
        """
        examples = list(examples)
        check_known_labels(self, examples)
        return super().update(examples, drop=drop, sgd=sgd, losses=losses)

    def get_loss(self, examples: Iterable[Example], scores):
        """spaCy's ``get_loss``, after checking every gold label is known.

        examples (Iterable[Example]): The batch.
        scores: The model's predictions for the batch.
        RETURNS (Tuple[float, Floats2d]): The loss and its gradient.
        """
        examples = list(examples)
        check_known_labels(self, examples)
        return super().get_loss(examples, scores)


class _ScoresToHostOnce:
    """Mixin for spaCy's text categorisers: copy a batch's scores to the host
    in one transfer before writing ``doc.cats``."""

    def set_annotations(self, docs: Iterable[Doc], scores) -> None:
        """spaCy's ``set_annotations``, with the scores copied to the host once.

        spaCy's reads each score from the GPU on its own: on an H100 that was
        two waits for the GPU per doc, 408 device-to-host copies per 200
        docs (benchmarks/profile_textcat.py --torch-profiler).

        docs (Iterable[Doc]): The documents to modify.
        scores (Floats2d): The scores from ``predict``.
        """
        super().set_annotations(docs, self.model.ops.to_numpy(scores))


class RNNTextCategorizer(_KnownLabelsOnly, _ScoresToHostOnce, TextCategorizer):
    """spaCy's ``TextCategorizer`` that refuses gold labels it does not know."""


class RNNMultiLabelTextCategorizer(_KnownLabelsOnly, _ScoresToHostOnce, MultiLabel_TextCategorizer):
    """spaCy's ``MultiLabel_TextCategorizer`` that refuses gold labels it does
    not know (a label it knows may still be missing from a doc's cats)."""


TEXTCAT_SCORE_WEIGHTS = {
    "cats_score": 1.0,
    "cats_score_desc": None,
    "cats_micro_p": None,
    "cats_micro_r": None,
    "cats_micro_f": None,
    "cats_macro_p": None,
    "cats_macro_r": None,
    "cats_macro_f": None,
    "cats_macro_auc": None,
    "cats_f_per_type": None,
}


@Language.factory(
    "rnn_textcat",
    assigns=["doc.cats"],
    default_config={
        "threshold": 0.0,
        "model": DEFAULT_RNN_TEXTCAT_MODEL,
        "scorer": {"@scorers": "spacy.textcat_scorer.v2"},
    },
    default_score_weights=TEXTCAT_SCORE_WEIGHTS,
)
def make_rnn_textcat(
    nlp: Language,
    name: str,
    model: Model[List[Doc], Floats2d],
    threshold: float,
    scorer: Optional[Callable],
) -> TextCategorizer:
    """Create a text categoriser for mutually exclusive classes whose default
    model is a BiLSTM (``spacy-rnn.TextCatRNN.v1``).

    nlp (Language): The pipeline.
    name (str): The component instance name.
    model (Model[List[Doc], Floats2d]): The classification model.
    threshold (float): Unused for exclusive classes; kept for spaCy's API.
    scorer (Optional[Callable]): The scoring method.
    RETURNS (TextCategorizer): spaCy's text categoriser (a subclass that
        refuses unknown gold labels in ``update``).
    """
    return RNNTextCategorizer(nlp.vocab, model, name, threshold=threshold, scorer=scorer)


@Language.factory(
    "rnn_textcat_multilabel",
    assigns=["doc.cats"],
    default_config={
        "threshold": 0.5,
        "model": DEFAULT_RNN_TEXTCAT_MULTILABEL_MODEL,
        "scorer": {"@scorers": "spacy.textcat_multilabel_scorer.v2"},
    },
    default_score_weights=TEXTCAT_SCORE_WEIGHTS,
)
def make_rnn_textcat_multilabel(
    nlp: Language,
    name: str,
    model: Model[List[Doc], Floats2d],
    threshold: float,
    scorer: Optional[Callable],
) -> MultiLabel_TextCategorizer:
    """Create a multi-label text categoriser whose default model is a BiLSTM
    (``spacy-rnn.TextCatRNN.v1`` with independent sigmoid outputs).

    nlp (Language): The pipeline.
    name (str): The component instance name.
    model (Model[List[Doc], Floats2d]): The classification model.
    threshold (float): Probability above which a label counts as present.
    scorer (Optional[Callable]): The scoring method.
    RETURNS (MultiLabel_TextCategorizer): spaCy's multi-label categoriser (a
        subclass that refuses unknown gold labels in ``update``).
    """
    return RNNMultiLabelTextCategorizer(
        nlp.vocab, model, name, threshold=threshold, scorer=scorer
    )

"""``rnn_textcat`` and ``rnn_textcat_multilabel``: spaCy's own text
categorisers with a recurrent model as their default.

No new component class: spaCy's ``TextCategorizer`` and
``MultiLabel_TextCategorizer`` already do labels, losses, scoring and
serialisation; only the default model differs.
"""
from typing import Callable, List, Optional

from spacy.language import Language
from spacy.pipeline.textcat import TextCategorizer
from spacy.pipeline.textcat_multilabel import MultiLabel_TextCategorizer
from spacy.tokens import Doc
from thinc.api import Config, Model
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
    RETURNS (TextCategorizer): spaCy's text categoriser.
    """
    return TextCategorizer(nlp.vocab, model, name, threshold=threshold, scorer=scorer)


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
    RETURNS (MultiLabel_TextCategorizer): spaCy's multi-label categoriser.
    """
    return MultiLabel_TextCategorizer(
        nlp.vocab, model, name, threshold=threshold, scorer=scorer
    )

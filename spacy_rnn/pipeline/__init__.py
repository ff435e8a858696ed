"""Pipeline components and factories."""
from .textcat import make_rnn_textcat, make_rnn_textcat_multilabel
from .language_model import make_rnn_lm  # noqa: F401

__all__ = ["make_rnn_textcat", "make_rnn_textcat_multilabel"]

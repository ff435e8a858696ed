"""Pipeline components and factories."""
from .textcat import make_rnn_textcat, make_rnn_textcat_multilabel

__all__ = ["make_rnn_textcat", "make_rnn_textcat_multilabel"]

"""spacy-rnn: recurrent networks (LSTM, GRU, RNN) as spaCy v3 components."""
from .about import __version__
from ._fork import register_fork_handler

register_fork_handler()

from . import architectures  # noqa: F401  (registers the architectures)
from . import pipeline  # noqa: F401  (registers the factories)
from . import callbacks  # noqa: F401  (registers the callbacks)
from . import optimization  # noqa: F401  (registers the toolkit callbacks)

__all__ = ["__version__"]

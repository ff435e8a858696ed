"""Command-line interface: ``python -m spacy_rnn COMMAND``.

Each command lives in its own module and registers itself on ``app``.
"""
from ._app import app
from . import convert  # noqa: F401
from . import convert_stream, evaluate_lm  # noqa: F401
from . import compress  # noqa: F401
from . import search  # noqa: F401

__all__ = ["app"]

"""Command-line interface: ``python -m spacy_rnn COMMAND``.

Each command lives in its own module and registers itself on ``app``.
"""
from ._app import app
from . import convert  # noqa: F401

__all__ = ["app"]

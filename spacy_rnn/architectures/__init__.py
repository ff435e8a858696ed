"""Registered architectures: import to make them available by name."""
from .encoder import build_rnn_encoder
from .textcat import build_textcat_rnn

__all__ = ["build_rnn_encoder", "build_textcat_rnn"]

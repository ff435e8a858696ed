"""Registered architectures: import to make them available by name."""
from .encoder import build_rnn_encoder
from .textcat import build_textcat_rnn
from .quantized import build_quantized_rnn_encoder  # noqa: F401

__all__ = ["build_rnn_encoder", "build_textcat_rnn"]

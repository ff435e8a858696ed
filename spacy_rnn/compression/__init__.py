"""Model compression for trained spacy-rnn pipelines: dynamic int8
quantisation (``quantize``) and magnitude pruning (``prune``)."""
from .prune import prune_pipeline
from .quantize import quantize_pipeline

__all__ = ["prune_pipeline", "quantize_pipeline"]

"""Corpus readers and converters."""

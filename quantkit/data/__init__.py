"""Calibration and evaluation text: the built-in enwiki corpus and user data."""

from quantkit.data.corpus import BUILTIN_DATA, load_documents, token_sequences

__all__ = ["BUILTIN_DATA", "load_documents", "token_sequences"]

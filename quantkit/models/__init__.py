"""Model loading (HF folder, GGUF, built-in names) and decoder structure discovery."""

from quantkit.models.architecture import SUPPORTED_FAMILIES, DecoderLayout, find_decoder_layout
from quantkit.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from quantkit.models.loading import LoadedModel, load_model

__all__ = ["SUPPORTED_FAMILIES", "DecoderLayout", "find_decoder_layout", "BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "load_model"]

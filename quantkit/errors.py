"""Errors a user can act on: each says what was given, what was expected, and what to do."""

from __future__ import annotations

__all__ = [
    "QuantkitError",
    "ConfigError",
    "ModelLoadError",
    "UnsupportedArchitectureError",
    "DataError",
    "NonFiniteActivationError",
    "ResumeMismatchError",
    "EvaluationError",
]


class QuantkitError(Exception):
    """Base class of every error quantkit raises on purpose (the CLI prints these cleanly)."""


class ConfigError(QuantkitError, ValueError):
    """A setting, config file or recipe holds a value or a name quantkit does not accept."""


class ModelLoadError(QuantkitError):
    """A model path, file or built-in name could not be turned into a model."""


class UnsupportedArchitectureError(QuantkitError):
    """The model is not a decoder of a family quantkit knows how to calibrate."""


class DataError(QuantkitError):
    """Calibration or evaluation text is missing, empty, malformed or too short."""


class NonFiniteActivationError(QuantkitError):
    """A layer produced NaN or Inf during calibration."""


class ResumeMismatchError(QuantkitError):
    """A partial run exists for different settings than the ones asked for now."""


class EvaluationError(QuantkitError):
    """An evaluation names an unknown task, or a model that is neither a bundle nor a model."""

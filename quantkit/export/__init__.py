"""Export: INT8 QDQ ONNX graphs for QNN, AIMET encodings, the deployment bundle, lint."""

from importlib import import_module

__all__ = ["export_bundle", "lint_bundle", "LintReport"]
_HOMES = {"export_bundle": "bundle", "lint_bundle": "lint", "LintReport": "lint"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

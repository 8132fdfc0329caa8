"""Calibration: activation statistics of every decoder Linear, the AIMET W8A8 baseline,
and ``calibrate`` — the main verb, which also builds the shadow and placement plans.

Names are resolved on first use (PEP 562), so importing a submodule such as
``quantkit.calibration.statistics`` does not pull in the whole pipeline.
"""

from importlib import import_module

__all__ = ["calibrate", "CalibrationConfig", "CalibrationResult", "collect_activation_statistics", "ActivationStatistics", "TensorStatistics"]

_HOMES = {
    "calibrate": "pipeline",
    "CalibrationResult": "pipeline",
    "CalibrationConfig": "config",
    "collect_activation_statistics": "collect",
    "ActivationStatistics": "statistics",
    "TensorStatistics": "statistics",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

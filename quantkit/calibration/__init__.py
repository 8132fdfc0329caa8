"""Calibration: activation statistics of every decoder Linear, the AIMET W8A8 baseline,
and ``calibrate`` — the main verb, which also builds the shadow and placement plans.

Names are resolved on first use (PEP 562), so importing a submodule such as
``quantkit.calibration.collect`` does not pull in the whole pipeline. The statistics
file format and the quantiles it reads live below calibration (``quantkit.statistics``,
``quantkit.quantiles``).
"""

from importlib import import_module

__all__ = ["calibrate", "CalibrationConfig", "CalibrationResult", "collect_activation_statistics", "ActivationStatistics", "TensorStatistics"]

_HOMES = {
    "calibrate": f"{__name__}.pipeline",
    "CalibrationResult": f"{__name__}.pipeline",
    "CalibrationConfig": f"{__name__}.config",
    "collect_activation_statistics": f"{__name__}.collect",
    "ActivationStatistics": "quantkit.statistics",
    "TensorStatistics": "quantkit.statistics",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Calibration: activation statistics of every decoder Linear and the AIMET W8A8 baseline."""

from quantkit.calibration.collect import collect_activation_statistics
from quantkit.calibration.config import CalibrationConfig
from quantkit.calibration.pipeline import CalibrationResult, calibrate
from quantkit.calibration.statistics import ActivationStatistics, TensorStatistics

__all__ = ["calibrate", "CalibrationConfig", "CalibrationResult", "collect_activation_statistics", "ActivationStatistics", "TensorStatistics"]

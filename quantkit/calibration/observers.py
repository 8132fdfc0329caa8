"""Activation observers: record statistics of a tensor and pass it through unchanged.

After torchao's ``observer.py``: an observer is an ``nn.Module`` whose ``forward``
records and returns its input; all state lives in buffers, so a ``state_dict`` is a
complete, exact checkpoint (used to resume a killed calibration run).

Two passes over the calibration data, because the outlier threshold is itself a
statistic of the data (a quantile of |x|) and exact per-channel counts beyond it need
it known up front:

* ``RANGE`` pass: per-tensor absmax, log-histogram of |x| (streaming quantiles),
  per-channel absmax, number of values.
* ``OUTLIERS`` pass: per-channel count of values with |x| > t and their excess
  Σ(|x| - t), for the per-tensor INT8 clip threshold t (arXiv 2407.05858 §3.3: values
  beyond the per-tensor range are the "outliers" the shadow path handles).
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from quantkit.errors import NonFiniteActivationError
from quantkit.quantiles import NUM_BINS, magnitude_histogram, quantile_from_log_histogram

__all__ = ["ObserverPass", "ActivationObserver"]


class ObserverPass(str, enum.Enum):
    RANGE = "range"
    OUTLIERS = "outliers"


class ActivationObserver(nn.Module):
    """Statistics of one activation tensor whose channels are its last dimension."""

    def __init__(self, name: str, num_channels: int):
        super().__init__()
        self.name = name
        self.num_channels = num_channels
        self.current_pass = ObserverPass.RANGE
        self.register_buffer("num_values_", torch.zeros((), dtype=torch.int64))
        self.register_buffer("absmax_", torch.zeros((), dtype=torch.float32))
        self.register_buffer("channel_absmax_", torch.zeros(num_channels, dtype=torch.float32))
        self.register_buffer("histogram_", torch.zeros(NUM_BINS, dtype=torch.int64))
        # Set between the passes by set_outlier_threshold(); NaN until then.
        self.register_buffer("outlier_threshold_", torch.full((), float("nan"), dtype=torch.float32))
        self.register_buffer("channel_outlier_count_", torch.zeros(num_channels, dtype=torch.int64))
        self.register_buffer("channel_outlier_excess_", torch.zeros(num_channels, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"{self.name}: expected {self.num_channels} channels in the last dimension, got shape {tuple(x.shape)}")
        magnitude = x.detach().float().abs().reshape(-1, self.num_channels)
        if self.current_pass is ObserverPass.RANGE:
            self._record_range(x, magnitude)
        else:
            self._record_outliers(x, magnitude)
        return x

    def _check_finite(self, x: torch.Tensor, summary: torch.Tensor) -> None:
        """Raise if ``x`` holds NaN or Inf, seen in ``summary`` (a per-channel max or sum of
        |x|, NaN or Inf exactly when ``x`` has one: both propagate through max and sum) so
        the batch is scanned once more only when it is bad."""
        if not torch.isfinite(summary).all():
            bad = int((~torch.isfinite(x)).sum())
            raise NonFiniteActivationError(
                f"layer {self.name} produced {bad} NaN/Inf values during calibration; the FP model "
                "itself is numerically broken on this input (check the weights, the dtype — use float32 — "
                "and that the tokenizer matches the model)"
            )

    def _record_range(self, x: torch.Tensor, magnitude: torch.Tensor) -> None:
        channel_absmax = magnitude.amax(dim=0)
        self._check_finite(x, channel_absmax)
        torch.maximum(self.channel_absmax_, channel_absmax, out=self.channel_absmax_)
        self.absmax_.copy_(self.channel_absmax_.max())
        self.histogram_ += magnitude_histogram(magnitude)
        self.num_values_ += magnitude.numel()

    def _record_outliers(self, x: torch.Tensor, magnitude: torch.Tensor) -> None:
        threshold = float(self.outlier_threshold_)
        if threshold != threshold:  # NaN: the range pass was not finished
            raise RuntimeError(f"{self.name}: set_outlier_threshold() must be called before the outlier pass")
        excess = magnitude.sub_(threshold).clamp_min_(0.0)  # magnitude is this call's own buffer
        channel_excess = excess.sum(dim=0, dtype=torch.float64)
        self._check_finite(x, channel_excess)
        self.channel_outlier_count_ += (excess > 0).sum(dim=0)
        self.channel_outlier_excess_ += channel_excess

    def quantile(self, q: float) -> float:
        """q-quantile of |x| over everything recorded in the range pass."""
        return quantile_from_log_histogram(self.histogram_, q, float(self.absmax_))

    def set_outlier_threshold(self, quantile: float) -> float:
        """Fix the clip threshold t = quantile(|x|) and switch to the outlier pass."""
        threshold = self.quantile(quantile)
        self.outlier_threshold_.fill_(threshold)
        self.current_pass = ObserverPass.OUTLIERS
        return threshold

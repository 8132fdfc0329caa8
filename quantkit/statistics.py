"""Activation statistics of every decoder Linear, saved as safetensors + a JSON summary.

Keys are ``"<linear name>:input"`` and ``"<linear name>:output"``. Linears that read the
same tensor (q/k/v, gate/up) share one input observer, so their input entries are equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit.quantiles import quantile_from_log_histogram

__all__ = ["TensorStatistics", "ActivationStatistics", "STATISTICS_FILE", "SUMMARY_FILE", "REPORTED_QUANTILES"]

STATISTICS_FILE = "statistics.safetensors"
SUMMARY_FILE = "statistics.json"
REPORTED_QUANTILES = (0.999, 0.9999)
_TENSOR_FIELDS = ("absmax", "channel_absmax", "histogram", "num_values", "outlier_threshold", "channel_outlier_count", "channel_outlier_excess")


@dataclass
class TensorStatistics:
    """What calibration measured of one activation tensor (channels = last dimension)."""

    absmax: torch.Tensor  # () float32: max |x|
    channel_absmax: torch.Tensor  # [C] float32
    histogram: torch.Tensor  # [NUM_BINS] int64: log-spaced histogram of |x|
    num_values: torch.Tensor  # () int64
    outlier_threshold: torch.Tensor  # () float32: the INT8 per-tensor clip point t
    channel_outlier_count: torch.Tensor  # [C] int64: values with |x| > t
    channel_outlier_excess: torch.Tensor  # [C] float64: Σ (|x| - t) over those values

    @classmethod
    def from_observer(cls, observer: object) -> TensorStatistics:
        """The statistics an observer holds in its ``<field>_`` buffers (calibration's
        ``ActivationObserver``)."""
        return cls(**{field: getattr(observer, f"{field}_").detach().cpu().clone() for field in _TENSOR_FIELDS})

    def quantile(self, q: float) -> float:
        return quantile_from_log_histogram(self.histogram, q, float(self.absmax))

    def summary(self) -> dict:
        counts = self.channel_outlier_count
        outlier_channels = torch.nonzero(counts).flatten()
        top = torch.argsort(counts, descending=True, stable=True)[: min(8, len(counts))]
        threshold = float(self.outlier_threshold)
        return {
            "absmax": float(self.absmax),
            **{f"p{100 * q:g}": self.quantile(q) for q in REPORTED_QUANTILES},
            "outlier_threshold": threshold,
            "absmax_over_threshold": float(self.absmax) / threshold if threshold > 0 else float("inf"),
            "num_values": int(self.num_values),
            "num_outliers": int(counts.sum()),
            "num_outlier_channels": int(len(outlier_channels)),
            "top_outlier_channels": [int(c) for c in top if counts[c] > 0],
        }


class ActivationStatistics(dict):
    """``{"<linear>:input" | "<linear>:output": TensorStatistics}`` plus save / load."""

    def save(self, folder: Path, metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        tensors = {f"{key}.{field}": getattr(stats, field).contiguous().clone() for key, stats in self.items() for field in _TENSOR_FIELDS}
        save_file(tensors, str(Path(folder) / STATISTICS_FILE))
        summary = {"metadata": metadata or {}, "tensors": {key: stats.summary() for key, stats in self.items()}}
        (Path(folder) / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))

    @classmethod
    def load(cls, folder: Path) -> ActivationStatistics:
        from safetensors.torch import load_file

        flat = load_file(str(Path(folder) / STATISTICS_FILE))
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in flat.items():
            key, field = name.rsplit(".", 1)
            grouped.setdefault(key, {})[field] = tensor
        return cls({key: TensorStatistics(**fields) for key, fields in grouped.items()})

    def input_statistics(self) -> dict[str, TensorStatistics]:
        return {key.removesuffix(":input"): stats for key, stats in self.items() if key.endswith(":input")}

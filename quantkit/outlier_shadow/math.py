"""Shadow outlier execution: the math (arXiv 2407.05858 §3.3).

Pure tensor functions, no modules or I/O; ``planner.py`` and
``quantkit.precision.output_ranges`` call them. Eq. 1 itself (the split, the shadow
product and the sum) is defined once, with the runtime: ``quantkit.runtime.shadow``.
Notation: x is a Linear's input activation, t its per-tensor INT8 clip threshold,
s = t / 127 its scale, W the FP weight [out, in], C the outlier input channels.
"""

from __future__ import annotations

import torch

from quantkit.quantiles import LOG10_MIN, NUM_BINS, quantile_from_log_histogram

__all__ = [
    "paper_clip_threshold",
    "mse_clip_threshold",
    "hot_channel_set",
    "output_outlier_channels",
    "layer_importance",
    "pruned_layers",
]

_BIN_WIDTH = (6.0 - LOG10_MIN) / NUM_BINS


def paper_clip_threshold(absmax: float, percentile_value: float, k: float) -> float:
    """§3.3 scale rule: take the range from max|x| when it is within k × the percentile
    (no outliers, no shadow work); otherwise clip at the percentile and send the excess
    to the shadow path."""
    return absmax if absmax <= k * percentile_value else percentile_value


def mse_clip_threshold(
    histogram: torch.Tensor, absmax: float, shadowed: bool, max_outlier_fraction: float = 1e-3, num_candidates: int = 200, num_bits: int = 8
) -> float:
    """Clip point t minimising the expected squared error of per-tensor INT8 over the
    calibration histogram of |x|:

        E(t) = Σ_{|x| ≤ t} s²/12  +  [not shadowed] Σ_{|x| > t} (|x| - t)²,   s = t / (2^(b-1) - 1)

    (uniform rounding noise inside the range, clipping error outside). With the shadow
    path the clipped excess comes back exactly, so only rounding noise counts and E(t)
    falls with t; there t is bounded below by the outlier budget: at most
    ``max_outlier_fraction`` of the values may exceed it.
    """
    qmax = 2 ** (num_bits - 1) - 1
    counts = histogram.double()
    total = float(counts.sum())
    centers = 10.0 ** (LOG10_MIN + (torch.arange(NUM_BINS, dtype=torch.float64) + 0.5) * _BIN_WIDTH)
    centers = centers.clamp(max=absmax)
    low = quantile_from_log_histogram(histogram, 1.0 - max_outlier_fraction, absmax) if shadowed else absmax / 1000.0
    candidates = torch.logspace(torch.log10(torch.tensor(max(low, 1e-8))), torch.log10(torch.tensor(absmax)), num_candidates, dtype=torch.float64)
    best_t, best_error = absmax, float("inf")
    for t in candidates.tolist():
        inside = centers <= t
        error = float(counts[inside].sum()) * (t / qmax) ** 2 / 12.0
        if not shadowed:
            error += float((counts[~inside] * (centers[~inside] - t) ** 2).sum())
        if error < best_error:
            best_t, best_error = t, error
    return best_t if total > 0 else absmax


def hot_channel_set(channel_outlier_count: torch.Tensor, coverage: float) -> torch.Tensor:
    """Smallest set of channels holding ≥ ``coverage`` of all calibration outliers
    (§3.3: a few "hot" channels carry most outliers; their FP weights stay resident)."""
    counts = channel_outlier_count.double()
    total = float(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(counts, descending=True, stable=True)
    covered = torch.cumsum(counts[order], dim=0) / total
    size = int(torch.searchsorted(covered, torch.tensor([coverage - 1e-12], dtype=torch.float64)).item()) + 1
    return torch.sort(order[: min(size, len(order))]).values


def output_outlier_channels(channel_absmax: torch.Tensor, max_channels: int, ratio: float) -> list[int]:
    """The few output channels of an NPU Linear whose range dwarfs the rest, computed in FP
    on the CPU instead (the output-side shadow): of the ``max_channels`` largest channel
    maxima a_(1) ≥ … ≥ a_(K), those above ``ratio`` × a_(K+1), the largest channel left
    on the NPU. Without them the graph's one per-tensor output range no longer has to
    cover the massive activations a handful of gate/up channels carry (measured on
    SmolLM2 block 11: channels 1229 and 1487 reach 48–64 where the 5th largest is 10)."""
    if max_channels <= 0 or channel_absmax.numel() <= max_channels:
        return []
    values, order = torch.sort(channel_absmax.float(), descending=True, stable=True)
    bound = ratio * float(values[max_channels])
    return sorted(int(c) for c, v in zip(order[:max_channels].tolist(), values[:max_channels].tolist()) if v > bound)


def layer_importance(absmax: float, scale: float) -> float:
    """§3.3 layer importance: max|x| / s — how far the outliers reach beyond the INT8 range."""
    return absmax / scale


def pruned_layers(importance: dict[str, float], fraction: float) -> set[str]:
    """The ``fraction`` least important layers: their outlier handling is dropped (§3.3)."""
    order = sorted(importance, key=lambda name: (importance[name], name))
    return set(order[: int(round(fraction * len(order)))])

"""Charts of the benchmark results (matplotlib, Agg backend, PNG). The calibration's own
plots (outlier heat-map, per-block sensitivity) live in ``quantkit.calibration.report``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["plot_delta_ppl", "plot_prefill_speed"]

_BAR = "#8c96a8"
_HIGHLIGHT = "#1f77b4"
_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _horizontal_bars(labels: Sequence[str], values: Sequence[float], highlight: str | None):
    """One horizontal bar per label, first label on top (as in the tables), ``highlight`` coloured."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(labels) + 1.4), constrained_layout=True)
    positions = range(len(labels))
    axis.barh(positions, values, color=[_HIGHLIGHT if label == highlight else _BAR for label in labels])
    axis.set_yticks(list(positions), labels)
    axis.invert_yaxis()
    return plt, figure, axis, positions


def plot_delta_ppl(labels: Sequence[str], delta_percent: Sequence[float], highlight: str | None, path: Path) -> None:
    """Horizontal bars of perplexity increase over FP (%), one per method. A log axis
    when the methods span more than a factor 20 (naive W8A8 is hundreds of percent, the
    good methods about one), so the small bars stay readable."""
    plt, figure, axis, positions = _horizontal_bars(labels, delta_percent, highlight)
    positive = [v for v in delta_percent if v > 0]
    logarithmic = len(positive) == len(delta_percent) and max(positive) / min(positive) > 20
    if logarithmic:
        from matplotlib.ticker import FuncFormatter

        axis.set_xscale("log")
        axis.set_xlim(min(positive) / 2, max(positive) * 6)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
    else:
        low, high = min(0.0, *delta_percent), max(0.0, *delta_percent)
        axis.set_xlim(low * 1.3, high * 1.3 + 1e-9)
        axis.axvline(0, color="#333", linewidth=0.8)
    for position, value in zip(positions, delta_percent):
        axis.annotate(f"{value:+.2f}%", (value, position), xytext=(4 if value >= 0 else -4, 0), textcoords="offset points", va="center", ha="left" if value >= 0 else "right", fontsize=10)
    axis.set_xlabel("test perplexity increase over FP" + (" (log scale)" if logarithmic else " (%)") + " — lower is better")
    axis.grid(axis="x", alpha=0.3)
    axis.set_axisbelow(True)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_prefill_speed(labels: Sequence[str], tokens_per_s: Sequence[float], speedups: Sequence[float | None], prompt_tokens: int | None, path: Path, highlight: str | None = None) -> None:
    """Horizontal bars of prefill tokens/s, each labelled with its speed-up over the baseline."""
    plt, figure, axis, positions = _horizontal_bars(labels, tokens_per_s, highlight)
    axis.set_xlim(0, max(tokens_per_s) * 1.35)
    for position, value, speedup in zip(positions, tokens_per_s, speedups):
        text = f"{value:,.0f} tok/s" + (f"  (×{speedup:.2f})" if speedup is not None else "")
        axis.annotate(text, (value, position), xytext=(4, 0), textcoords="offset points", va="center", fontsize=10)
    prompt = f", {prompt_tokens}-token prompt" if prompt_tokens else ""
    axis.set_xlabel(f"prefill speed (tokens/s{prompt}) — higher is better")
    axis.grid(axis="x", alpha=0.3)
    axis.set_axisbelow(True)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)

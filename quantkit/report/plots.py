"""Charts of the benchmark results, the per-block sensitivity and the per-graph precision
(matplotlib, Agg backend, PNG). The outlier heat-map, drawn while calibrating from the
statistics, lives in ``quantkit.calibration.report``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "plot_stages",
    "plot_delta_ppl",
    "plot_prefill_speed",
    "plot_sensitivity",
    "plot_precision_pareto",
    "plot_precision_map",
    "plot_htp_cycles",
    "PRECISION_COLOURS",
]

_BAR = "#8c96a8"
_HIGHLIGHT = "#1f77b4"
_DPI = 110
# cell colours of the precision map: NPU INT8 as the placement strip's NPU blue, CPU as its red
PRECISION_COLOURS = {"A8": "#1f77b4", "A16": "#9ecae1", "W4A16": "#2ca02c", "W4A16+offsets": "#0b5d1e", "CPU-FP": "#d62728"}


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


def plot_stages(seconds: dict[str, float], peak_mb: dict[str, float], path: Path) -> None:
    """Two bar charts side by side, one bar per stage in run order: its wall time and its
    peak resident memory (the stage that sets the run's peak highlighted)."""
    plt = _pyplot()
    stages = list(seconds)
    highest = max(peak_mb, key=peak_mb.get) if peak_mb else None
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, max(3.0, 0.4 * len(stages) + 1.4)), sharey=True, constrained_layout=True)
    positions = range(len(stages))
    time_axis.barh(positions, [seconds[s] for s in stages], color=_BAR)
    memory_axis.barh(positions, [peak_mb.get(s, 0.0) / 1024 for s in stages], color=[_HIGHLIGHT if s == highest else _BAR for s in stages])
    time_axis.set_yticks(list(positions), stages)
    time_axis.invert_yaxis()
    time_axis.set_xlabel("seconds")
    memory_axis.set_xlabel("peak resident memory (GiB)")
    for axis in (time_axis, memory_axis):
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


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
        axis.annotate(
            f"{value:+.2f}%",
            (value, position),
            xytext=(4 if value >= 0 else -4, 0),
            textcoords="offset points",
            va="center",
            ha="left" if value >= 0 else "right",
            fontsize=10,
        )
    axis.set_xlabel("test perplexity increase over FP" + (" (log scale)" if logarithmic else " (%)") + " — lower is better")
    axis.grid(axis="x", alpha=0.3)
    axis.set_axisbelow(True)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_prefill_speed(
    labels: Sequence[str], tokens_per_s: Sequence[float], speedups: Sequence[float | None], prompt_tokens: int | None, path: Path, highlight: str | None = None
) -> None:
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


def plot_precision_pareto(
    a8_share_percent: Sequence[float],
    delta_ppl_percent: Sequence[float],
    chosen: int | None,
    budget_percent: float | None,
    path: Path,
    placed: tuple[float, float] | None = None,
) -> None:
    """The activation-bits search's measured points: validation ΔPPL over FP (%) against
    the share of NPU Linear MACs at A8 (%), joined in order of A8 share; point ``chosen``
    (an index) highlighted, the budget a horizontal line, and ``placed`` (A8 share, ΔPPL
    after block placement) marked when given."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 5), constrained_layout=True)
    order = sorted(range(len(a8_share_percent)), key=lambda i: a8_share_percent[i])
    axis.plot([a8_share_percent[i] for i in order], [delta_ppl_percent[i] for i in order], "o-", color=_BAR, label="measured (all blocks on the NPU)")
    if chosen is not None:
        label = f"chosen bits: {a8_share_percent[chosen]:.0f}% at A8, {delta_ppl_percent[chosen]:+.2f}%"  # in the legend: never over a point
        axis.plot([a8_share_percent[chosen]], [delta_ppl_percent[chosen]], "o", markersize=12, color=_HIGHLIGHT, label=label)
    if placed is not None:
        axis.plot(
            [placed[0]],
            [placed[1]],
            "D",
            markersize=9,
            color=PRECISION_COLOURS["CPU-FP"],
            label=f"after block placement: {placed[0]:.0f}% of the NPU blocks' MACs at A8, {placed[1]:+.2f}%",
        )
    if budget_percent is not None:
        axis.axhline(budget_percent, color="#e0a800", linestyle="--", linewidth=1.5, label=f"budget +{budget_percent:g}%")
    axis.set_xlim(-5, 105)
    axis.set_xlabel("share of NPU Linear MACs at A8 (%) — more is faster")
    axis.set_ylabel("validation perplexity increase over FP (%)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_precision_map(cells: Sequence[Sequence[str]], kinds: Sequence[str], path: Path) -> None:
    """Blocks (x) × graph kinds (y): each cell "A8", "A16" (INT8 weights), "W4A16", "W4A16+offsets" or "CPU-FP" (colours of
    ``PRECISION_COLOURS``, the label written in the cell) or "" for no graph.
    ``cells[k][b]`` is kind ``kinds[k]`` of block ``b``."""
    from matplotlib.patches import Patch, Rectangle

    plt = _pyplot()
    num_blocks = max((len(row) for row in cells), default=0)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.42 * num_blocks + 2.5), 0.6 * len(kinds) + 1.8), constrained_layout=True)
    for k, row in enumerate(cells):
        for b, value in enumerate(row):
            if value:
                axis.add_patch(Rectangle((b - 0.5, k - 0.5), 1, 1, facecolor=PRECISION_COLOURS[value], edgecolor="white", linewidth=1.5))
                axis.text(
                    b,
                    k,
                    {"A8": "8", "A16": "16", "W4A16": "4/16", "W4A16+offsets": "4o", "CPU-FP": "FP"}[value],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#1d2330" if value == "A16" else "white",
                )
    axis.set_xlim(-0.5, num_blocks - 0.5)
    axis.set_ylim(len(kinds) - 0.5, -0.5)
    axis.set_xticks(range(num_blocks))
    axis.set_yticks(range(len(kinds)), kinds)
    axis.set_xlabel("block")
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    labels = {"A8": "NPU, W8A8", "A16": "NPU, W8A16", "W4A16": "NPU, W4A16", "W4A16+offsets": "NPU, W4A16 with block offsets", "CPU-FP": "CPU, FP32"}
    handles = [Patch(color=colour, label=labels[name]) for name, colour in PRECISION_COLOURS.items()]
    axis.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_sensitivity(sensitivities, placement, path: Path) -> None:
    """Bar chart of per-block ΔNLL (quantizing that block alone), CPU-FP blocks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantkit.sensitivity.placement import CPU_FP

    blocks = [s.block for s in sensitivities]
    values = [s.delta_nll * 1000 for s in sensitivities]
    colors = ["#d62728" if placement.placement[b] == CPU_FP else "#1f77b4" for b in blocks]
    figure, axis = plt.subplots(figsize=(12, 4), constrained_layout=True)
    axis.bar(blocks, values, color=colors)
    axis.set_xlabel("block")
    axis.set_ylabel("ΔNLL, only this block quantized\n(milli-nats per token)")
    axis.set_xticks(blocks)
    axis.set_title(
        f"Per-block sensitivity — {placement.npu_blocks}/{len(blocks)} blocks on the NPU (blue), "
        f"{len(blocks) - placement.npu_blocks} on the CPU in FP (red); "
        f"PPL {placement.ppl_:.2f} vs FP {placement.fp_ppl_:.2f} (budget +{100 * placement.budget_relative_ppl:g}%)"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_htp_cycles(graphs: Sequence[dict], path: Path) -> None:
    """Per NPU graph (x, in bundle order; the ``graphs`` rows of ``quantkit profile``'s
    profile.json): its HTP cycles per chunk at the bundle's precision (bars, A8 and A16 in
    the precision map's colours) and with every graph at A16 (line)."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    names = [g["name"] for g in graphs]
    figure, axis = plt.subplots(figsize=(max(8.0, 0.09 * len(names) + 3), 4.2), constrained_layout=True)
    positions = range(len(names))
    colours = [PRECISION_COLOURS["A8" if g["activation_bits"] == 8 else "A16"] for g in graphs]
    axis.bar(positions, [g["cycles"] / 1e6 for g in graphs], width=0.85, color=colours)
    axis.plot(positions, [g["a16_cycles"] / 1e6 for g in graphs], color="#1d2330", linewidth=1.0, label="every graph A16 (W8A16)")
    axis.set_ylabel("HTP cycles per chunk (millions)")
    axis.set_xlabel("NPU graph (blocks in order: qkv, o, gate_up, down)")
    ticks = [i for i, name in enumerate(names) if name.endswith(".qkv")]
    axis.set_xticks(ticks, [names[i].split(".")[0] for i in ticks], rotation=90, fontsize=7)
    handles = [Patch(color=PRECISION_COLOURS["A8"], label="A8 in this bundle"), Patch(color=PRECISION_COLOURS["A16"], label="A16 in this bundle")]
    axis.legend(handles=[*handles, *axis.get_legend_handles_labels()[0]], loc="upper right", frameon=False)
    cycles, a16 = sum(g["cycles"] for g in graphs), sum(g["a16_cycles"] for g in graphs)
    axis.set_title(f"{cycles / 1e6:,.0f} M cycles per chunk; every graph A16: {a16 / 1e6:,.0f} M", fontsize=10)
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)

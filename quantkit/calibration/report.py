"""What calibration shows a person: the outlier heat-map and a one-page text summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit.models.architecture import DecoderLayout
from quantkit.quant_primitives import INT8_QMAX
from quantkit.runtime.bundle import graph_kind
from quantkit.statistics import ActivationStatistics

__all__ = ["OutlierLayer", "rank_outlier_layers", "plot_outlier_heatmap", "format_summary"]

_SITE_KINDS = ("qkv", "o", "gate_up", "down")
_SITE_TITLES = {"qkv": "q/k/v_proj input", "o": "o_proj input", "gate_up": "gate/up_proj input", "down": "down_proj input"}


@dataclass(frozen=True)
class OutlierLayer:
    site: str  # the first Linear reading the tensor; the others share it
    shared_with: tuple[str, ...]
    absmax: float
    clip: float  # the INT8 per-tensor clip point (outlier_quantile of |x|)
    num_outlier_channels: int

    @property
    def scale(self) -> float:
        return self.clip / INT8_QMAX

    @property
    def importance(self) -> float:
        """The paper's layer importance max|x| / s (arXiv 2407.05858 §3.3), s = clip / 127."""
        return self.absmax / self.scale


def rank_outlier_layers(statistics: ActivationStatistics, layout: DecoderLayout) -> list[OutlierLayer]:
    """Linear input tensors ordered by max|x| / scale, largest first (one row per shared input)."""
    rows = []
    for site in layout.input_sites():
        stats = statistics[f"{site.name}:input"]
        rows.append(
            OutlierLayer(
                site=site.name,
                shared_with=site.linear_names[1:],
                absmax=float(stats.absmax),
                clip=float(stats.outlier_threshold),
                num_outlier_channels=int((stats.channel_outlier_count > 0).sum()),
            )
        )
    return sorted(rows, key=lambda row: row.importance, reverse=True)


def plot_outlier_heatmap(statistics: ActivationStatistics, layout: DecoderLayout, path: Path) -> None:
    """Layers × channels heat-map of log10(channel max|x| / per-tensor clip), one panel per
    kind of Linear input: red channels exceed the INT8 range, those are the outliers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sites_by_kind: dict[str, list] = {kind: [] for kind in _SITE_KINDS}
    for site in layout.input_sites():
        sites_by_kind[graph_kind(site.name)].append(site)
    figure, axes = plt.subplots(len(_SITE_KINDS), 1, figsize=(12, 3.2 * len(_SITE_KINDS)), constrained_layout=True)
    image = None
    for axis, kind in zip(axes, _SITE_KINDS):
        rows = []
        for site in sites_by_kind[kind]:
            stats = statistics[f"{site.name}:input"]
            rows.append(torch.log10(stats.channel_absmax.clamp_min(1e-12) / float(stats.outlier_threshold)))
        grid = torch.stack(rows).numpy()
        image = axis.imshow(grid, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-2.0, vmax=2.0)
        axis.set_title(f"{_SITE_TITLES[kind]}  ({grid.shape[1]} channels)")
        axis.set_ylabel("block")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole blocks, also for 2-block models
    axes[-1].set_xlabel("input channel")
    colorbar = figure.colorbar(image, ax=list(axes), shrink=0.6)
    colorbar.set_label("log10(channel max|x| / per-tensor INT8 clip)")
    figure.suptitle("Activation outliers of the Linear inputs (red: beyond the INT8 per-tensor range)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _confirmation_over(realizations: dict | None, fp: float | None, budget: float) -> bool:
    return bool(realizations and fp) and realizations["confirmation"]["ppl"] > realizations.get("confirmation_fp", fp) * (1 + budget)


def format_summary(
    model_id: str,
    perplexities: dict[str, float],
    top_layers: list[OutlierLayer],
    quantile: float,
    timings: dict[str, float],
    peak_memory_mb: float,
    placement=None,
    resident_shadow_share: float | None = None,
    precision=None,
    realizations: dict | None = None,
    weight_bytes: tuple[int, int] | None = None,
    rotation=None,
    search_realizations: int = 1,
    bundle_chunk_size: int | None = None,
    stage_peaks_mb: dict[str, float] | None = None,
) -> str:
    lines = [f"quantkit calibrate — {model_id}", "", "Validation perplexity"]
    fp = perplexities.get("fp")
    for method, value in perplexities.items():
        delta = f"  ({100 * (value / fp - 1):+.1f}% vs FP)" if fp and method != "fp" else ""
        lines.append(f"  {method:<28} {value:10.2f}{delta}")
    if bundle_chunk_size is not None and "quantkit" in perplexities:
        lines.append(
            f"  quantkit = the exported bundle (chunk {bundle_chunk_size}) through the runtime (ONNX Runtime CPU) on these tokens; "
            "quantkit_simulated = the same arithmetic in calibration's torch twin (what the search and placement measured)"
        )
    if realizations and fp:
        search, confirmation, draws = realizations["search"], realizations["confirmation"], realizations["confirmation_draws"]

        def interval(point: dict, reference: float) -> str:
            return f"{100 * (point['ppl'] / reference - 1):+.2f}% (95% bounds over windows {100 * (point['ppl_lower'] / reference - 1):+.2f}% … {100 * (point['ppl_upper'] / reference - 1):+.2f}%)"

        lines.append(f"  prediction (the search's windows): {interval(search, fp)}")
        confirmation_fp = realizations.get("confirmation_fp", fp)
        lines.append(f"  confirmation (other validation windows, never searched on): {interval(confirmation, confirmation_fp)}")
        if len(draws) > 1:
            lines.append(
                f"  confirmation over {len(draws)} rounding realizations (inputs × (1 + 1e-6·noise)): {', '.join(f'{v:.2f}' for v in draws)} "
                f"({100 * (min(draws) / confirmation_fp - 1):+.2f}% … {100 * (max(draws) / confirmation_fp - 1):+.2f}%): executors that round "
                "differently (ONNX Runtime, QNN HTP) land in this range, not on one value"
            )
    if placement is not None:
        lines += [
            "",
            f"Placement: {placement.npu_blocks}/{len(placement.placement)} blocks on the NPU, CPU-FP blocks "
            f"{placement.cpu_block_indices} "
            f"({'within' if placement.within_budget and not _confirmation_over(realizations, fp, placement.budget_relative_ppl) else 'OVER'} the +{100 * placement.budget_relative_ppl:g}% budget)",
        ]
        shipped = perplexities.get("quantkit")
        limit = 1 + placement.budget_relative_ppl
        if placement.within_budget and shipped is not None and fp and shipped > fp * limit:
            lines.append(
                f"  the bundle itself measured {100 * (shipped / fp - 1):+.2f}%, over the budget the simulation met: another rounding draw "
                "(see the realizations above); lower --accuracy-budget for a margin"
            )
        if realizations and realizations["confirmation"]["ppl"] > realizations.get("confirmation_fp", fp) * limit:
            lines.append("  the confirmation windows measured OVER the budget: the decision does not hold on other text; lower --accuracy-budget")
        all_npu = next((e["ppl"] for e in placement.evaluations_ if not e["cpu_blocks"]), None)
        if placement.cpu_block_indices and all_npu is not None and fp:
            lines.append(
                f"  every block on the NPU measured {all_npu:.2f} ({100 * (all_npu / fp - 1):+.1f}% vs FP); to keep them all there, "
                "raise --accuracy-budget (or edit placement.json before export)"
            )
    if precision is not None:
        npu = placement.npu_block_indices if placement is not None else None
        graphs = [g for g in precision.graphs.values() if npu is None or g.block_index in npu]
        a8 = sum(g.activation_bits == 8 for g in graphs)
        lines.append(
            f"Activations ({precision.mode}): {a8}/{len(graphs)} NPU graphs at A8, the rest A16 — "
            f"{100 * precision.a8_mac_share(npu):.1f}% of NPU linear MACs at A8"
        )
        if precision.search_:
            points = ", ".join(
                f"{100 * p['a8_mac_share']:.0f}% A8 → {p['ppl']:.2f}" + (f" (≤ {p['ppl_upper']:.2f})" if "ppl_upper" in p else "") for p in precision.search_
            )
            each = f", each over {search_realizations} rounding realizations" if search_realizations > 1 else ""
            lines.append(f"  measured (A8 MAC share → PPL{each}, decided on the 95% upper bound): {points}")
        four = [g for g in graphs if g.weight_bits == 4]
        if four:
            blocks = sorted({g.weight_block_size for g in four if g.weight_block_size})
            form = f"LPBQ blocks of {', '.join(map(str, blocks))}" if blocks else "per output channel"
            with_offsets = [g for g in four if g.has_block_offsets]
            offsets = (
                f", {'/'.join(sorted({g.weight_block_offsets for g in with_offsets}))} block offsets on {len(with_offsets)} of them" if with_offsets else ""
            )
            rest = ", the rest INT8" if len(four) < len(graphs) else ""
            lines.append(f"Weights: {len(four)}/{len(graphs)} NPU graphs INT4 ({form}{offsets}){rest}")
        if precision.weight_search_:
            points = ", ".join(f"{100 * p['w4_mac_share']:.0f}% W4 → {p['ppl']:.2f}" for p in precision.weight_search_)
            lines.append(f"  measured (share of NPU weights at W4 → PPL): {points}")
    if rotation is not None:
        lines.append(f"Residual stream rotated: randomized Hadamard {rotation.construction} (seed {rotation.seed}), fused into the weights")
    if weight_bytes is not None:
        npu_bytes, int8_bytes = weight_bytes
        lines.append(
            f"NPU weight bytes: {npu_bytes / 1e6:.1f} MB = {100 * npu_bytes / int8_bytes:.1f}% of the same graphs with INT8 weights ({int8_bytes / 1e6:.1f} MB)"
        )
    if resident_shadow_share is not None:
        lines.append(f"Resident shadow weights: {100 * resident_shadow_share:.2f}% of the model's parameters")
    lines += ["", f"Top {len(top_layers)} outlier layers (clip = p{100 * quantile:g} of |x|, scale s = clip/127)"]
    lines.append(f"  {'layer':<42} {'max|x|':>9} {'clip':>8} {'max/clip':>9} {'max|x|/s':>9} {'outlier ch':>10}")
    for row in top_layers:
        name = row.site.removeprefix("model.") + (" (+" + ",".join(n.rsplit(".", 1)[-1] for n in row.shared_with) + ")" if row.shared_with else "")
        lines.append(f"  {name:<42} {row.absmax:9.2f} {row.clip:8.3f} {row.absmax / row.clip:9.1f} {row.importance:9.0f} {row.num_outlier_channels:10d}")
    lines += ["", "Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; peak memory {peak_memory_mb:.0f} MB"]
    if stage_peaks_mb:
        lines.append("Peak memory per stage: " + ", ".join(f"{k} {v / 1024:.1f} GiB" for k, v in stage_peaks_mb.items()))
    return "\n".join(lines)

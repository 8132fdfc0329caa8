"""The output ranges of the NPU graphs: recorded over calibration text, one clip per
Linear and activation bit-width (orchestration; the clip math is ``outlier_shadow.math``)."""

from __future__ import annotations

import torch

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.math import mse_clip_threshold, output_outlier_channels
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.outlier_shadow.simulated_linear import WeightCodes, simulated_quantization
from quantkit.precision.plan import GraphPrecision, PrecisionPlan
from quantkit.quantiles import NUM_BINS, log_histogram
from quantkit.runtime.qdq import ACTIVATION_BITS, fake_quantize_activation
from quantkit.runtime.qdq import block_means as record_block_means

__all__ = [
    "record_npu_outputs",
    "choose_output_channels",
    "output_clips",
    "initial_precision",
    "calibrated_precision",
    "recalibrate_output_clips",
    "OUTPUT_RANGE_RULES",
]

OUTPUT_RANGE_RULES = ("mse", "max")


@torch.no_grad()
def record_npu_outputs(
    layout: DecoderLayout,
    plan: ShadowPlan,
    sequences: torch.Tensor,
    input_bits: int = 16,
    batch_size: int = 4,
    weights: WeightCodes | None = None,
    block_means: dict[str, float] | None = None,
) -> dict[str, tuple[float, torch.Tensor, torch.Tensor]]:
    """Per Linear: (max |y_npu|, log-histogram of |y_npu|, per-channel max |y_npu|) of its
    NPU part y_npu = Q(clip(x)) Wqᵀ + b over ``sequences``, every block quantized with
    float outputs. The shadow part is added after, in FP, so the massive values it carries
    do not stretch these ranges; nor do the plan's output-side shadow channels (left out).
    ``block_means``, when given, receives per site with block-offset weights the largest
    |block mean| of its quantized input Q(clip(x)) (the grid of the means, ``runtime.qdq``)."""
    device = next(layout.model.parameters()).device
    absmax: dict[str, torch.Tensor] = {}
    channel_absmax: dict[str, torch.Tensor] = {}
    histograms: dict[str, torch.Tensor] = {}

    def observer_for(name: str):
        out_features = layout.linear(name).out_features
        keep = torch.ones(out_features, dtype=torch.bool, device=device)
        keep[plan.site_of(name).output_channels_.get(name, [])] = False
        absmax[name] = torch.zeros((), device=device)
        channel_absmax[name] = torch.zeros(out_features, device=device)
        histograms[name] = torch.zeros(NUM_BINS, dtype=torch.int64, device=device)

        def observe(y: torch.Tensor) -> None:
            per_channel = y.abs().flatten(0, -2).amax(dim=0)
            torch.maximum(channel_absmax[name], per_channel, out=channel_absmax[name])
            kept = y[..., keep]
            torch.maximum(absmax[name], kept.abs().max(), out=absmax[name])
            histograms[name] += log_histogram(kept)

        return observe

    def means_observer_for(site_name: str, module):
        block_means[site_name] = 0.0

        def observe(clipped: torch.Tensor) -> None:
            record = module.record
            means = record_block_means(fake_quantize_activation(clipped, record.input_scale, record.bits), record.weight.block_size)
            block_means[site_name] = max(block_means[site_name], float(means.abs().max()))

        return observe

    with simulated_quantization(layout, plan, None, weights=weights, input_bits=input_bits):
        for name in layout.linear_names():
            layout.linear(name).observer = observer_for(name)
        if block_means is not None:
            for site_name, site in plan.sites.items():
                with_offsets = [layout.linear(n) for n in site.linear_names if layout.linear(n).record.weight.has_offsets]
                if with_offsets:  # the site's Linears share the input and its block means
                    layout.linear(site.linear_names[0]).input_observer = means_observer_for(site_name, with_offsets[0])
        for batch in sequences.split(batch_size):
            layout.model(input_ids=batch.to(device), use_cache=False)
    return {name: (float(absmax[name]), histograms[name].cpu(), channel_absmax[name].cpu()) for name in absmax}


def choose_output_channels(plan: ShadowPlan, channel_absmax: dict[str, torch.Tensor]) -> None:
    """Set each site's output-side shadow channels (``plan.config.max_output_channels``,
    ``output_outlier_ratio``) from the per-channel max |y_npu| of its Linears."""
    config = plan.config
    for site in plan.sites.values():
        site.output_channels_ = {}
        for name in site.linear_names:
            channels = output_outlier_channels(channel_absmax[name], config.max_output_channels, config.output_outlier_ratio)
            if channels:
                site.output_channels_[name] = channels


def output_clips(absmax: float, histogram: torch.Tensor, rule: str = "mse") -> dict[str, float]:
    """{"8": clip, "16": clip} of one Linear's output. ``"mse"``: the clip minimising
    rounding + saturation error over the histogram at each width (a range set by the max
    leaves most INT8 outputs within a few steps: +6.9% perplexity on SmolLM2, measured);
    ``"max"``: the observed max (min/max calibration, what plain PTQ does)."""
    if rule not in OUTPUT_RANGE_RULES:
        raise ValueError(f"output range rule: got {rule!r}, expected one of {OUTPUT_RANGE_RULES}")
    if absmax <= 0:
        return {str(bits): 1.0 for bits in ACTIVATION_BITS}
    if rule == "max":
        return {str(bits): absmax for bits in ACTIVATION_BITS}
    return {str(bits): mse_clip_threshold(histogram, absmax, shadowed=False, num_bits=bits) for bits in ACTIVATION_BITS}


def initial_precision(layout: DecoderLayout, plan: ShadowPlan, output_clips: dict[str, dict[str, float]], mode: str) -> PrecisionPlan:
    """Every graph at A8 (``mode`` "auto" or "8") or A16 ("16"), with its output clips at both widths."""
    bits = 16 if mode == "16" else 8
    graphs = {}
    for name, site in plan.sites.items():
        macs = sum(layout.linear(n).in_features * layout.linear(n).out_features for n in site.linear_names)
        graphs[name] = GraphPrecision(list(site.linear_names), site.block_index, macs, bits, {n: output_clips[n] for n in site.linear_names})
    return PrecisionPlan(mode=mode, graphs=graphs)


def calibrated_precision(
    layout: DecoderLayout, plan: ShadowPlan, sequences: torch.Tensor, mode: str = "16", rule: str = "mse", weights: WeightCodes | None = None
) -> PrecisionPlan:
    """Choose the output-side shadow channels (set in ``plan``), record the output ranges
    over ``sequences`` without them, and return the precision plan with every graph at A8
    (``mode`` "auto" / "8") or A16 ("16")."""
    if plan.config.max_output_channels > 0:  # first pass: which output channels dwarf the rest
        choose_output_channels(plan, {name: values[2] for name, values in record_npu_outputs(layout, plan, sequences, weights=weights).items()})
    recorded = record_npu_outputs(layout, plan, sequences, weights=weights)
    return initial_precision(layout, plan, {name: output_clips(absmax, histogram, rule) for name, (absmax, histogram, _) in recorded.items()}, mode)


def recalibrate_output_clips(
    layout: DecoderLayout, plan: ShadowPlan, precision: PrecisionPlan, sequences: torch.Tensor, weights: WeightCodes, rule: str = "mse"
) -> None:
    """Record the output ranges again with ``weights`` (after the weights changed format,
    e.g. to INT4) and replace every graph's clips in ``precision``; the output-side shadow
    channels stay as chosen."""
    means: dict[str, float] = {}
    recorded = record_npu_outputs(layout, plan, sequences, weights=weights, block_means=means)
    for site_name, graph in precision.graphs.items():
        graph.output_clips_ = {name: output_clips(*recorded[name][:2], rule) for name in graph.linear_names}
        graph.means_clip_ = means.get(site_name)

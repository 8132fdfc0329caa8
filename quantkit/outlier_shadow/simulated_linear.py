"""A torch Linear that computes exactly what the deployed NPU graph + shadow path compute
(§3.3, Eq. 1), for calibration's evaluations; and a context manager that swaps it into a
model's blocks.

The NPU part is :class:`quantkit.runtime.qdq.QdqLinear` — the record the export writes
into the graph and the runtime's twin reads back — so a perplexity measured here is the
bundle's, up to float summation order (a test proves it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from quantkit.models.architecture import DecoderLayout
from quantkit.models.swap import replaced_linears
from quantkit.outlier_shadow.plan import ShadowPlan, SiteShadowPlan
from quantkit.runtime.qdq import QdqLinear, QuantizedWeight, activation_scale, int32_bias_codes, int32_bias_scales
from quantkit.runtime.shadow import combine, outlier_product, split_outliers
from quantkit.weights.quantize import WeightCodes, quantized_weights

if TYPE_CHECKING:
    from quantkit.precision.plan import PrecisionPlan

__all__ = ["DeployedLinear", "deployed_record", "simulated_quantization", "WeightCodes"]


def deployed_record(
    linear: nn.Linear,
    name: str,
    site: SiteShadowPlan,
    bits: int,
    output_clip: float | None,
    weight: QuantizedWeight,
    means_clip: float | None = None,
    output_bits: int | None = None,
) -> QdqLinear:
    """The NPU graph's arithmetic for ``linear`` (module ``name``): input scale from the
    site's clip, the quantized weight, INT32 bias, output scale from ``output_clip``
    (None: float output, used only while the output ranges are being recorded) at
    ``output_bits`` (None: ``bits``), the grid
    of the block means from ``means_clip`` (block offsets; None: the input's). The rows
    of the site's output-side shadow channels are zero: the CPU computes those outputs."""
    output_channels = site.output_channels_.get(name, [])
    if output_channels:
        weight = weight.with_rows_zeroed(output_channels)
    input_scale = activation_scale(site.threshold_, bits)
    bias_codes = bias_scales = None
    if linear.bias is not None:
        bias_scales = int32_bias_scales(input_scale, weight.scales)
        bias_codes = int32_bias_codes(linear.bias, bias_scales)
        if output_channels:
            bias_codes[output_channels] = 0
    output_scale = None if output_clip is None else activation_scale(output_clip, output_bits or bits)
    means_scale = activation_scale(min(means_clip, site.threshold_), bits) if means_clip is not None and weight.has_offsets else None
    return QdqLinear(weight, input_scale, output_scale, bits, bias_codes, bias_scales, means_scale, output_bits)


class DeployedLinear(nn.Module):
    """clip(x) through the NPU record; the output-side shadow channels C computed in FP,
    clip(x)·W[C]ᵀ + b[C]; and — unless the site is pruned — the clipped excess times the
    FP weight columns (the shadow path; every channel, as the runtime reads cold columns
    on demand). ``observer``, when set, sees the NPU accumulator before output
    requantization (the calibration of the output ranges)."""

    def __init__(self, linear: nn.Linear, site: SiteShadowPlan, record: QdqLinear, name: str = "", sink_tokens: int = 0):
        super().__init__()
        device = linear.weight.device
        self.record = record.to(device)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold = site.threshold_
        self.shadowed = site.shadowed
        self.sink_tokens = sink_tokens if site.shadowed else 0  # the first positions of each sequence run in FP (runtime/shadow.py)
        self.shadow_columns = linear.weight.detach()  # W_fp itself (no copy)
        channels = site.output_channels_.get(name, [])
        self.output_channels = torch.tensor(channels, dtype=torch.long, device=device)
        self.output_rows = linear.weight.detach()[channels] if channels else None
        self.output_bias = linear.bias.detach()[channels] if channels and linear.bias is not None else None
        self.observer: Callable[[torch.Tensor], None] | None = None
        self.input_observer: Callable[[torch.Tensor], None] | None = None  # sees clip(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x is [..., T, in] at positions 0…T−1 (calibration runs whole sequences)
        sink_rows = torch.arange(x.shape[-2], device=x.device) < self.sink_tokens if self.sink_tokens else None
        clipped, excess = split_outliers(x, self.threshold, sink_rows)
        if self.input_observer is not None:
            self.input_observer(clipped.detach())
        y = self.record.accumulate(clipped)
        if self.observer is not None:
            self.observer(y.detach())
        if self.record.output_scale is not None:
            y = self.record.requantize_output(y)
        # output-side shadow: these channels' NPU rows are zero, the CPU computes them in FP
        output_part = (self.output_channels, nn.functional.linear(clipped, self.output_rows, self.output_bias)) if self.output_rows is not None else None
        outlier_part = None
        if self.shadowed:  # the shadow product, over every channel (the runtime reads cold columns on demand)
            sink = self.sink_tokens
            rows = excess[..., sink:, :]
            # x_out is about 1% non-zero (SmolLM2) outside the sink rows: gathered contiguous, the active
            # channels' FP columns cost a fraction of the dense product (sparse.mm over a transposed view is slower).
            product = outlier_product(rows.reshape(-1, self.in_features), lambda active: self.shadow_columns.T[active])
            rest = None if product is None else product[0].reshape(*rows.shape[:-1], -1)
            if sink:  # the sink rows are x_out in every channel: one dense product (not every column gathered)
                dense = nn.functional.linear(excess[..., :sink, :], self.shadow_columns)
                outlier_part = torch.cat([dense, rows.new_zeros(*rows.shape[:-1], self.out_features) if rest is None else rest], dim=-2)
            else:
                outlier_part = rest
        return combine(y, output_part, outlier_part)  # Eq. 1: NPU part + FP shadow parts, the runtime's sum


def simulated_quantization(
    layout: DecoderLayout,
    plan: ShadowPlan,
    precision: PrecisionPlan | None,
    blocks: Iterable[int] | None = None,
    weights: WeightCodes | None = None,
    input_bits: int | None = None,
):
    """Context manager: within it, the Linears of ``blocks`` (default: all) run as
        DeployedLinear with the bit-widths and output ranges of ``precision`` (a
        ``PrecisionPlan``; None: float outputs at ``input_bits`` — the output-range recording
        pass); the FP Linears are put back afterwards. ``weights`` holds the NPU weights
    (calibration's, e.g. GPTQ-rounded); a Linear missing from it is rounded to nearest."""
    selected = set(range(layout.num_blocks)) if blocks is None else set(blocks)
    names = [name for site in plan.sites.values() if site.block_index in selected for name in site.linear_names]
    codes = dict(weights or {})
    for name in names:  # not given: round to nearest in the graph's weight format
        if name not in codes:
            graph = None if precision is None else precision.of(name)
            formats = (8, None) if graph is None else (graph.weight_bits, graph.weight_block_size)
            codes.update(quantized_weights(layout, [name], plan.config.weight_scale_rule, *formats))

    def swap(name: str, linear: nn.Linear) -> DeployedLinear:
        site = plan.site_of(name)
        if precision is None:
            return DeployedLinear(linear, site, deployed_record(linear, name, site, input_bits or 16, None, codes[name]), name, plan.config.sink_tokens)
        graph = precision.of(name)
        return DeployedLinear(
            linear,
            site,
            deployed_record(linear, name, site, graph.activation_bits, graph.output_clip(name), codes[name], graph.means_clip_, graph.out_bits),
            name,
            plan.config.sink_tokens,
        )

    return replaced_linears(layout, names, swap)

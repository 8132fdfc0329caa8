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

__all__ = ["DeployedLinear", "SiteInput", "deployed_record", "simulated_quantization", "WeightCodes"]


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


class SiteInput:
    """What the Linears of one site (one NPU graph input) compute alike from it, once per
    input: clip(x) and x_out (Eq. 1; the sink rows whole in x_out), Q(clip(x)), and the
    shadow product x_out·W_fpᵀ of all the site's Linears side by side, as the runtime's
    ``ShadowSite`` computes it (the same values as one product per Linear).

    HF's blocks call a site's Linears one after another with one tensor (q/k/v, gate/up).
    The first call computes the parts; the others take them; a new tensor, or the same one
    changed in place, is computed afresh; the parts are dropped once every Linear of the
    site has taken them."""

    def __init__(self) -> None:
        self.members: list[DeployedLinear] = []
        self._input: torch.Tensor | None = None
        self._version = -1
        self._parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self._taken = 0

    def join(self, member: DeployedLinear) -> int:
        """Add ``member``; returns the offset of its outputs in the site's shadow product."""
        if self.members:
            first = self.members[0]
            same = (first.threshold, first.sink_tokens, first.shadowed, first.record.input_scale, first.record.bits)
            if same != (member.threshold, member.sink_tokens, member.shadowed, member.record.input_scale, member.record.bits):
                raise ValueError("the Linears of one site share their input's clip, sink rows and quantization")
        offset = sum(m.out_features for m in self.members)
        self.members.append(member)
        return offset

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(clip(x), Q(clip(x)), the site's shadow product [..., T, Σ out] or None)."""
        if self._input is not x or self._version != x._version:
            self._parts, self._input, self._version, self._taken = self._compute(x), x, x._version, 0
        parts = self._parts
        self._taken += 1
        if self._taken == len(self.members):
            self._parts, self._input = None, None
        return parts

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # x is [..., T, in] at positions 0…T−1 (calibration runs whole sequences)
        first = self.members[0]
        sink = first.sink_tokens
        sink_rows = torch.arange(x.shape[-2], device=x.device) < sink if sink else None
        clipped, excess = split_outliers(x, first.threshold, sink_rows)
        quantized = first.record.quantize_input(clipped)
        if not first.shadowed:
            return clipped, quantized, None
        # the shadow product, over every channel (the runtime reads cold columns on demand)
        rows = excess[..., sink:, :]
        # x_out is about 1% non-zero (SmolLM2) outside the sink rows: gathered contiguous, the active
        # channels' FP columns cost a fraction of the dense product (sparse.mm over a transposed view is slower).
        product = outlier_product(rows.reshape(-1, first.in_features), lambda active: torch.cat([m.shadow_columns.T[active] for m in self.members], dim=1))
        total = sum(m.out_features for m in self.members)
        rest = None if product is None else product[0].reshape(*rows.shape[:-1], total)
        if not sink:
            return clipped, quantized, rest
        # the sink rows are x_out in every channel: one dense product each (not every column gathered)
        dense = torch.cat([nn.functional.linear(excess[..., :sink, :], m.shadow_columns) for m in self.members], dim=-1)
        return clipped, quantized, torch.cat([dense, rows.new_zeros(*rows.shape[:-1], total) if rest is None else rest], dim=-2)


class DeployedLinear(nn.Module):
    """clip(x) through the NPU record; the output-side shadow channels C computed in FP,
    clip(x)·W[C]ᵀ + b[C]; and — unless the site is pruned — the clipped excess times the
    FP weight columns (the shadow path; every channel, as the runtime reads cold columns
    on demand). What depends on the input only is computed once for the site
    (:class:`SiteInput`). ``observer``, when set, sees the NPU accumulator before output
    requantization (the calibration of the output ranges)."""

    def __init__(self, linear: nn.Linear, site: SiteShadowPlan, record: QdqLinear, name: str = "", sink_tokens: int = 0, site_input: SiteInput | None = None):
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
        self.site_input = site_input if site_input is not None else SiteInput()
        self.shadow_offset = self.site_input.join(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clipped, quantized, site_shadow = self.site_input.parts(x)
        if self.input_observer is not None:
            self.input_observer(clipped.detach())
        y = self.record.accumulate_quantized(quantized)
        if self.observer is not None:
            self.observer(y.detach())
        if self.record.output_scale is not None:
            y = self.record.requantize_output(y)
        # output-side shadow: these channels' NPU rows are zero, the CPU computes them in FP
        output_part = (self.output_channels, nn.functional.linear(clipped, self.output_rows, self.output_bias)) if self.output_rows is not None else None
        outlier_part = None if site_shadow is None else site_shadow[..., self.shadow_offset : self.shadow_offset + self.out_features]
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

    site_inputs: dict[int, SiteInput] = {}  # one per site (id of its plan entry): its Linears share the input's parts

    def swap(name: str, linear: nn.Linear) -> DeployedLinear:
        site = plan.site_of(name)
        shared = site_inputs.setdefault(id(site), SiteInput())
        if precision is None:
            record = deployed_record(linear, name, site, input_bits or 16, None, codes[name])
        else:
            graph = precision.of(name)
            record = deployed_record(linear, name, site, graph.activation_bits, graph.output_clip(name), codes[name], graph.means_clip_, graph.out_bits)
        return DeployedLinear(linear, site, record, name, plan.config.sink_tokens, shared)

    return replaced_linears(layout, names, swap)

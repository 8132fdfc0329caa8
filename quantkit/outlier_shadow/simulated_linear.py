"""A torch Linear that computes exactly what the NPU + shadow path compute (§3.3, Eq. 1),
for accuracy evaluation; and a context manager that swaps it into a model's blocks."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from quantkit.models.architecture import DecoderLayout
from quantkit.models.swap import replaced_linears
from quantkit.outlier_shadow.math import shadow_linear, split_outliers
from quantkit.outlier_shadow.plan import ShadowPlan, SiteShadowPlan
from quantkit.quant_primitives import fake_quantize_symmetric, quantize_weight_per_channel, symmetric_scale

__all__ = ["ShadowQuantLinear", "simulated_quantization", "calibrate_npu_output_ranges"]


class ShadowQuantLinear(nn.Module):
    """INT8 per-channel weights, INT8 per-tensor input clipped at the plan's threshold,
    the NPU output requantized to INT8 per tensor (when the plan has its range), and —
    unless the layer is pruned — the clipped excess added back in FP with the shadow
    weights (hot columns resident, cold ones read on demand: every channel).

    With ``record_npu_output`` set, the largest |y_npu| seen is kept in
    ``npu_output_absmax`` (the calibration of the NPU graphs' output ranges)."""

    def __init__(self, linear: nn.Linear, site: SiteShadowPlan, name: str = ""):
        super().__init__()
        weight_int8, _ = quantize_weight_per_channel(linear.weight)
        self.register_buffer("weight_int8", weight_int8)
        self.bias = linear.bias
        self.threshold = site.threshold_
        self.shadowed = site.shadowed
        self.output_absmax = site.output_absmax_.get(name)
        self.record_npu_output = False
        self.register_buffer("npu_output_absmax", torch.zeros((), device=linear.weight.device))
        self.register_buffer("shadow_channels", torch.arange(linear.in_features, device=linear.weight.device))
        self.register_buffer("shadow_columns", linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shadowed:
            y_npu, y_shadow = shadow_linear(x, self.weight_int8, self.shadow_columns, self.shadow_channels, self.threshold, self.bias)
        else:
            clipped, _ = split_outliers(x, self.threshold)
            y_npu, y_shadow = nn.functional.linear(fake_quantize_symmetric(clipped, symmetric_scale(self.threshold)), self.weight_int8, self.bias), None
        if self.record_npu_output:
            torch.maximum(self.npu_output_absmax, y_npu.detach().abs().max(), out=self.npu_output_absmax)
        if self.output_absmax is not None:
            y_npu = fake_quantize_symmetric(y_npu, symmetric_scale(self.output_absmax))
        return y_npu if y_shadow is None else y_npu + y_shadow


def simulated_quantization(layout: DecoderLayout, plan: ShadowPlan, blocks: Iterable[int] | None = None):
    """Context manager: within it, the Linears of ``blocks`` (default: all) run as
    ShadowQuantLinear; the FP Linears are put back afterwards."""
    selected = set(range(layout.num_blocks)) if blocks is None else set(blocks)
    names = [name for site in plan.sites.values() if site.block_index in selected for name in site.linear_names]
    return replaced_linears(layout, names, lambda name, linear: ShadowQuantLinear(linear, plan.site_of(name), name))


@torch.no_grad()
def calibrate_npu_output_ranges(layout: DecoderLayout, plan: ShadowPlan, sequences: torch.Tensor, batch_size: int = 4) -> None:
    """Record in ``plan`` the range of every Linear's NPU output y_npu = Q(clip(x)) Wqᵀ
    over ``sequences`` — what its INT8 output encoding must cover. The shadow part is
    added after, in FP, so the massive values it carries do not stretch this range."""
    device = next(layout.model.parameters()).device
    with simulated_quantization(layout, plan):
        simulated = {name: layout.linear(name) for name in layout.linear_names()}
        for module in simulated.values():
            module.record_npu_output, module.output_absmax = True, None
        for batch in sequences.split(batch_size):
            layout.model(input_ids=batch.to(device), use_cache=False)
    for name, module in simulated.items():
        plan.site_of(name).output_absmax_[name] = float(module.npu_output_absmax)

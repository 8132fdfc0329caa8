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

__all__ = ["ShadowQuantLinear", "simulated_quantization"]


class ShadowQuantLinear(nn.Module):
    """INT8 per-channel weights, INT8 per-tensor input clipped at the plan's threshold,
    and — unless the layer is pruned — the clipped excess added back in FP with the
    shadow weights (hot columns resident, cold ones read on demand: every channel)."""

    def __init__(self, linear: nn.Linear, site: SiteShadowPlan):
        super().__init__()
        weight_int8, _ = quantize_weight_per_channel(linear.weight)
        self.register_buffer("weight_int8", weight_int8)
        self.bias = linear.bias
        self.threshold = site.threshold_
        self.shadowed = site.shadowed
        self.register_buffer("shadow_channels", torch.arange(linear.in_features, device=linear.weight.device))
        self.register_buffer("shadow_columns", linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shadowed:
            y_npu, y_shadow = shadow_linear(x, self.weight_int8, self.shadow_columns, self.shadow_channels, self.threshold, self.bias)
            return y_npu + y_shadow
        clipped, _ = split_outliers(x, self.threshold)
        return nn.functional.linear(fake_quantize_symmetric(clipped, symmetric_scale(self.threshold)), self.weight_int8, self.bias)


def simulated_quantization(layout: DecoderLayout, plan: ShadowPlan, blocks: Iterable[int] | None = None):
    """Context manager: within it, the Linears of ``blocks`` (default: all) run as
    ShadowQuantLinear; the FP Linears are put back afterwards."""
    selected = set(range(layout.num_blocks)) if blocks is None else set(blocks)
    names = [name for site in plan.sites.values() if site.block_index in selected for name in site.linear_names]
    return replaced_linears(layout, names, lambda name, linear: ShadowQuantLinear(linear, plan.site_of(name)))

"""SmoothQuant with static per-tensor INT8 activations (Xiao et al., arXiv 2211.10438).

Per input channel j of a Linear input X, the smoothing factor (Eq. 4)

    s_j = max|X_j|^α / max|W_{:,j}|^(1-α)

moves quantization difficulty from activations to weights: X' = X / s, W' = W · s,
X' W'ᵀ = X Wᵀ. The divide by s folds into the op producing X (the RMSNorm weight for
q/k/v and gate/up, up_proj's rows for down_proj), so the simulation below applies it to
X directly. o_proj is not smoothed: with grouped-query attention each v_proj output
feeds several o_proj input channels, which forbids a per-channel fold (the standard
Llama mappings skip it too). Activations: INT8 per tensor, static, scale from the
calibrated max of X' (= max_j max|X_j| / s_j, exact from the per-channel statistics).

Why our own: llm-compressor's SmoothQuantModifier needs its own calibration pipeline and
produces dynamic-activation checkpoints; this baseline must use the same statistics and
the same simulated INT8 Linear as quantkit so the comparison is like for like.
"""

from __future__ import annotations

import torch
from torch import nn

from quantkit.models.architecture import DecoderLayout
from quantkit.models.swap import replaced_linears
from quantkit.quant_primitives import fake_quantize_symmetric, quantize_weight_per_channel, symmetric_scale
from quantkit.statistics import ActivationStatistics

__all__ = ["smoothing_factors", "SmoothQuantLinear", "smoothquant_simulation", "SMOOTHED_LINEARS"]

SMOOTHED_LINEARS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj")


def smoothing_factors(activation_channel_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Eq. 4 of SmoothQuant over the Linears sharing one input (their columns' max)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}, expected a value in [0, 1]")
    weight_absmax = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)
    factors = activation_channel_absmax.clamp_min(1e-5).pow(alpha) / weight_absmax.clamp_min(1e-5).pow(1 - alpha)
    return factors.clamp_min(1e-5)


class SmoothQuantLinear(nn.Module):
    """y = Q(X / s) · Q(W · s)ᵀ + b with static per-tensor activation scale."""

    def __init__(self, linear: nn.Linear, factors: torch.Tensor, activation_absmax: float):
        super().__init__()
        weight_int8, _ = quantize_weight_per_channel(linear.weight * factors)
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("factors", factors.to(linear.weight.device))
        self.bias = linear.bias
        self.activation_scale = symmetric_scale(activation_absmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_quantize_symmetric(x / self.factors, self.activation_scale), self.weight_int8, self.bias)


def smoothquant_simulation(layout: DecoderLayout, statistics: ActivationStatistics, alpha: float):
    """Context manager: every decoder Linear runs as SmoothQuantLinear (o_proj with s = 1)."""
    makers = {}
    for site in layout.input_sites():
        channel_absmax = statistics[f"{site.name}:input"].channel_absmax
        if site.name.rsplit(".", 1)[-1] in SMOOTHED_LINEARS:
            factors = smoothing_factors(channel_absmax, [layout.linear(n).weight for n in site.linear_names], alpha)
        else:
            factors = torch.ones_like(channel_absmax)
        activation_absmax = float((channel_absmax / factors).max())
        for name in site.linear_names:
            makers[name] = (factors, activation_absmax)
    return replaced_linears(layout, makers, lambda name, linear: SmoothQuantLinear(linear, *makers[name]))

"""LLM.int8()-style mixed-precision decomposition (Dettmers et al., arXiv 2208.07339),
as an upper reference: it needs dynamic per-token scales and FP outlier columns decided
at run time, which a static NPU graph cannot do.

Per forward pass, input channels with any |x| ≥ threshold (6.0) run in FP; the rest is
vector-wise INT8: per-token (row) absmax scales for X, per-output-channel for W (§3.2).

    X W ᵀ ≈ X_o W_oᵀ  +  s_X ⊗ s_W · (Q(X_r) Q(W_r)ᵀ)

Why our own: bitsandbytes' kernels target CUDA; this simulation computes the same
decomposition in float on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from quantkit.models.architecture import DecoderLayout
from quantkit.models.swap import replaced_linears
from quantkit.quant_primitives import fake_quantize_symmetric, quantize_weight_per_channel, symmetric_scale

__all__ = ["LLMInt8Linear", "llm_int8_simulation", "LLM_INT8_THRESHOLD"]

LLM_INT8_THRESHOLD = 6.0


class LLMInt8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, threshold: float = LLM_INT8_THRESHOLD):
        super().__init__()
        self.weight = linear.weight
        weight_int8, _ = quantize_weight_per_channel(linear.weight)
        self.register_buffer("weight_int8", weight_int8)
        self.bias = linear.bias
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        outlier_columns = (flat.abs() >= self.threshold).any(dim=0)
        regular = flat.masked_fill(outlier_columns, 0.0)
        row_scales = symmetric_scale(regular.abs().amax(dim=1, keepdim=True))
        y = nn.functional.linear(fake_quantize_symmetric(regular, row_scales), self.weight_int8)
        if outlier_columns.any():
            y = y + flat[:, outlier_columns] @ self.weight[:, outlier_columns].T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)


def llm_int8_simulation(layout: DecoderLayout, threshold: float = LLM_INT8_THRESHOLD):
    """Context manager: every decoder Linear runs as LLMInt8Linear."""
    return replaced_linears(layout, layout.linear_names(), lambda name, linear: LLMInt8Linear(linear, threshold))

"""FP work on the CPU (torch): RMSNorm, RoPE, causal attention over a KV cache.

Written against the bundle's architecture numbers only — no transformers import, so the
deployment side does not depend on model classes. Formulas follow the Llama family as
transformers implements it (RMSNorm weight × x / rms, rotate-half RoPE, grouped-query
attention scaled by 1/√head_dim).
"""

from __future__ import annotations

import torch

__all__ = ["rms_norm", "rope_cos_sin", "apply_rope", "causal_attention"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim] of the default RoPE (θ^(-2i/d) frequencies, duplicated halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [heads, T, head_dim] rotated by position (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, first_position: int) -> torch.Tensor:
    """q [heads, T, d] of positions first_position.., keys/values [kv_heads, P, d] of
    positions 0..P-1 (P = first_position + T): each query sees keys at or before it;
    softmax(q·kᵀ/√d)·v with grouped-query heads (query head h reads kv head h // (heads/kv_heads))."""
    length = q.shape[1]
    hidden = torch.arange(k_cache.shape[1])[None, :] > torch.arange(first_position, first_position + length)[:, None]
    # An additive float mask: PyTorch's CPU attention takes a much slower path for a boolean one.
    mask = torch.zeros(hidden.shape).masked_fill(hidden, float("-inf"))
    return torch.nn.functional.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=k_cache.shape[0] != q.shape[0])

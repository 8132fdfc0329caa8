"""FP work on the CPU (torch): RMSNorm, RoPE, causal attention over a KV cache, the MLP
activations.

Written against the bundle's architecture description only (``architecture``) — no
transformers import, so the deployment side does not depend on model classes. Formulas
follow the families as transformers implements them: RMSNorm (w or Gemma's 1 + w) × x /
rms, rotate-half RoPE on the first rotary dims, grouped-query attention with the model's
scale, window and optional logit soft-capping.
"""

from __future__ import annotations

import torch
from quantkit.runtime.architecture import RopeTable

__all__ = ["rms_norm", "rope_cos_sin", "apply_rope", "causal_attention", "linear", "activation", "softcap", "ROW_TILE"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """x / √(mean(x²) + eps) · (offset + weight) — offset 1 is Gemma's RMSNorm."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (weight + offset if offset else weight) * (x.float() * torch.rsqrt(variance + eps))


def rope_cos_sin(positions: torch.Tensor, table: RopeTable) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, rotary_dim] of ``table`` at ``positions`` (angles p·θ_i, halves duplicated),
    scaled by the table's attention scaling."""
    inv_freq = torch.tensor(table.inv_freq, dtype=torch.float32)
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if table.attention_scaling != 1.0:
        cos, sin = cos * table.attention_scaling, sin * table.attention_scaling
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [heads, T, head_dim] rotated by position (rotate-half convention) on its first
    cos.shape[-1] dims; the remaining dims pass through (partial rotary)."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]], dim=-1)
    half = rotary // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap · tanh(x / cap) (Gemma's logit soft-capping); x itself when cap is None."""
    return x if cap is None else torch.tanh(x / cap) * cap


def causal_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    *,
    scale: float,
    window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """q [heads, T, d] of positions ``query_positions`` [T], keys/values [kv_heads, P, d] of
    positions ``key_positions`` [P] (one sequence's context): each query at p sees the keys
    at j ≤ p, and with a window W only those with j > p − W; softmax(s · q·kᵀ)·v with
    grouped-query heads (query head h reads kv head h // (heads/kv_heads))."""
    keys, queries = key_positions[None, :], query_positions[:, None]
    hidden = keys > queries
    if window is not None:
        hidden |= keys <= queries - window
    # An additive float mask: PyTorch's CPU attention takes a much slower path for a boolean one.
    mask = torch.zeros(hidden.shape).masked_fill(hidden, float("-inf"))
    groups = q.shape[0] // k_cache.shape[0]
    if logit_softcap is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=groups != 1)
    # scaled_dot_product_attention cannot cap the scores: the same computation written out
    keys_, values_ = k_cache.repeat_interleave(groups, dim=0), v_cache.repeat_interleave(groups, dim=0)
    scores = softcap(q @ keys_.transpose(-1, -2) * scale, logit_softcap) + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ values_


ROW_TILE = 16  # row counts padded to a multiple of this: no row lands in a GEMM's remainder tile


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x·Wᵀ + b with every row computed the same way whatever the number of rows: the CPU
    GEMM rounds the rows of a remainder tile differently (measured: the last T mod 4 rows
    of a [T, 576]·[576, 49152] product), so a row's result would depend on how many
    tokens share its call — on packing. Rows are padded to a multiple of ROW_TILE."""
    rows = x.shape[0]
    padded = -rows % ROW_TILE
    if padded:
        x = torch.cat([x, x.new_zeros(padded, *x.shape[1:])])
    return torch.nn.functional.linear(x, weight, bias)[:rows]


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP activation of the description: SiLU, or GELU with the tanh approximation."""
    if name == "silu":
        return torch.nn.functional.silu(x)
    if name == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    raise ValueError(f"activation: got {name!r}, expected 'silu' or 'gelu_tanh'")

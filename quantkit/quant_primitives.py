"""Quantization math: choose scales, quantize, dequantize.

Pure, typed, side-effect-free tensor functions (no modules, no I/O, no logging), after
torchao's ``quant_primitives.py``. Every other part of quantkit calls these; nothing
re-derives a scale inline.

Conventions follow AIMET / QNN for symmetric INT8: ``q = clamp(round(x / s), -127, 127)``
with a symmetric range so that zero is exact and the offset is 0 (AIMET encodings store
``offset = -128`` for a signed 8-bit symmetric encoding with ``min = -128·s``).
"""

from __future__ import annotations

import torch

__all__ = [
    "INT8_QMAX",
    "MIN_SCALE",
    "symmetric_scale",
    "quantize_symmetric",
    "dequantize_symmetric",
    "fake_quantize_symmetric",
    "quantize_weight_per_channel",
    "weight_scales_per_channel",
    "lpbq_scales",
    "block_offsets",
    "WEIGHT_SCALE_RULES",
    "sqnr_db",
]

WEIGHT_SCALE_RULES = ("max", "mse")
# Clip ratios tried by the "mse" weight rule: 1.00, 0.99, …, 0.75 of each row's max|w|.
_WEIGHT_CLIP_RATIOS = torch.linspace(1.0, 0.75, 26)
# Per-channel LPBQ scales tried by the "mse" rule: 0.900, 0.925, …, 1.300 × max_k b_jk / K
# (see lpbq_scales; 1.0 is among them, so the search never does worse than that scale).
_LPBQ_CHANNEL_SCALE_FACTORS = torch.linspace(0.9, 1.3, 17)
# Weights searched at once by the "mse" LPBQ rule (whole rows; see lpbq_scales).
_LPBQ_SEARCH_ELEMENTS = 2**18

INT8_QMAX = 127
# Smallest scale handed out: a tensor that is all zeros still gets a usable encoding.
MIN_SCALE = 1e-8


def symmetric_scale(absmax: torch.Tensor | float, num_bits: int = 8) -> torch.Tensor:
    """Scale of a symmetric signed quantizer whose largest code maps to ``absmax``.

    s = max(absmax / (2^(b-1) - 1), MIN_SCALE) as float32; works per tensor (scalar) or per
    channel (vector). A float64 tensor is divided in float64 and rounded once (the
    activation scales of the deployed graphs, ``quantkit.runtime.qdq.activation_scale``);
    anything else is divided in float32.
    """
    qmax = 2 ** (num_bits - 1) - 1
    absmax = torch.as_tensor(absmax)
    if absmax.dtype != torch.float64:
        absmax = absmax.to(torch.float32)
    return torch.clamp(absmax / qmax, min=MIN_SCALE).to(torch.float32)


def quantize_symmetric(x: torch.Tensor, scale: torch.Tensor, num_bits: int = 8, axis: int | None = None, full_range: bool = False) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s), -qmax, qmax)`` (as int32); ``full_range``: the
    lower bound is −qmax − 1 (all 2^b codes, e.g. [−8, 7]).

    ``axis`` names the channel dimension of a per-channel ``scale`` (None: per tensor).
    """
    qmax = 2 ** (num_bits - 1) - 1
    scale = _broadcast_scale(scale, x, axis)
    return torch.clamp(torch.round(x / scale), -qmax - int(full_range), qmax).to(torch.int32)


def dequantize_symmetric(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Real values ``q · s`` of integer codes (float32)."""
    return q.to(torch.float32) * _broadcast_scale(scale, q, axis)


def fake_quantize_symmetric(x: torch.Tensor, scale: torch.Tensor, num_bits: int = 8, axis: int | None = None, full_range: bool = False) -> torch.Tensor:
    """Quantize then dequantize, keeping ``x``'s dtype: what the NPU's INT8 does to ``x``."""
    return dequantize_symmetric(quantize_symmetric(x, scale, num_bits, axis, full_range), scale, axis).to(x.dtype)


def weight_scales_per_channel(
    weight: torch.Tensor, num_bits: int = 8, rule: str = "max", importance: torch.Tensor | None = None, full_range: bool = False
) -> torch.Tensor:
    """Per-output-channel symmetric scales of a [out, in] weight.

    ``"max"``: s_j = max_i |W_ji| / qmax (min/max, nothing clipped). ``"mse"``: per row j,
    the clip c_j = r · max|W_j| (r from 1.00 down to 0.75 in steps of 0.01) minimising the
    rounding-plus-clipping error Σ_i (W_ji − fq(W_ji; c_j/qmax))², s_j = c_j / qmax.
    ``importance`` (per input, [in] or [out, in]) weights each term: with the diagonal of
    the layer's input Hessian H = Σ xᵀx it is the output error Σ_i H_ii δ_ji² of a
    diagonal approximation (the clip that matters to the layer's output, not to its
    weights — AWQ's and GPTQ's activation-aware view, arXiv 2306.00978 §3.2).

    AIMET's ``SqnrEncodingAnalyzer(gamma=1)`` chooses the same clips (measured on SmolLM2's
    q/gate/down projections: weight MSE within 0.3% of this search, both ~3% below
    min/max), but on 2048-bin histograms at 3–7 s per layer, ~15 min per model on two
    cores; this exact search over the weights takes milliseconds per layer.
    """
    if rule not in WEIGHT_SCALE_RULES:
        raise ValueError(f"weight scale rule: got {rule!r}, expected one of {WEIGHT_SCALE_RULES}")
    weight = weight.detach().float()
    absmax = weight.abs().amax(dim=1)
    if rule == "max":
        return symmetric_scale(absmax, num_bits)
    weighting = None if importance is None else importance.float()
    best_scales, best_errors = None, None
    for ratio in _WEIGHT_CLIP_RATIOS.tolist():
        scales = symmetric_scale(absmax * ratio, num_bits)
        errors = _rounding_errors(weight, scales[:, None], num_bits, full_range, weighting)
        if best_scales is None:
            best_scales, best_errors = scales, errors
        else:
            better = errors < best_errors
            best_scales, best_errors = torch.where(better, scales, best_scales), torch.where(better, errors, best_errors)
    return best_scales


def _rounding_errors(x: torch.Tensor, scales: torch.Tensor, num_bits: int, full_range: bool, weighting: torch.Tensor | None) -> torch.Tensor:
    """Σ over the last dimension of (fq(x; s) − x)² (× ``weighting``), fq the symmetric
    fake quantization of :func:`fake_quantize_symmetric` with ``scales`` broadcast against
    ``x``: the same float operations, in place in one buffer (the scale searches run it
    hundreds of times per weight; no integer round trip: the rounded values are integers
    already, exact in float32)."""
    qmax = 2 ** (num_bits - 1) - 1
    trial = x / scales
    trial.round_().clamp_(-qmax - int(full_range), qmax).mul_(scales).sub_(x).pow_(2)
    if weighting is not None:
        trial.mul_(weighting)
    return trial.sum(dim=-1)


def lpbq_scales(
    weight: torch.Tensor,
    block_size: int,
    num_bits: int = 4,
    rule: str = "max",
    max_block_scale: int = 16,
    importance: torch.Tensor | None = None,
    full_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-power blockwise (LPBQ) scales of a [out, in] weight, blocks of ``block_size``
    inputs: (per-channel float32 scales s [out], uint8 block scales k [out, in / B]).

    Each block first gets its own scale b_jk by ``rule`` (as a row of
    :func:`weight_scales_per_channel`); then s_j = max_k b_jk / K, K = ``max_block_scale``
    (16: 4-bit codes on an 8-bit grid), so the block's scale is s_j · k_jk — AIMET's grouped
    blockwise quantization (``decompressed_bw = 8``), the form QNN HTP runs. ``"max"``:
    k_jk = clamp(round(b_jk / s_j), 1, K). ``"mse"``: k_jk ∈ 1…K minimising the block's
    rounding-plus-clipping error on the grid s_j · k_jk itself — rounding b_jk / s_j to an
    integer moves a small block's scale by up to a third (b/s = 1.5 → 1 or 2); measured on
    SmolLM2 (every graph W4A16, LPBQ 32, GPTQ; validation 8×512 tokens of the deployed
    arithmetic, FP 20.92): 22.91 with the rounded integers, 22.77 with these.
    ``"mse"`` also searches s_j itself, from 0.9 to 1.3 × max_k b_jk / K
    (``_LPBQ_CHANNEL_SCALE_FACTORS``), for the one whose best integers give the row the
    least error: the blocks' ideal scales are not integer multiples of any one s_j, and a
    slightly larger s_j often lands more of them near one. Measured with int4 block offsets
    on every graph (a search harness: GPTQ weights, FP activations with the shadow path,
    word perplexity on ``quantkit_wikitext``, FP 39.13): 40.35 without the search, 40.14
    with it; the deployed budget bundle it enabled is in the README (block offsets). On
    symmetric LPBQ 32 (no offsets) it moved the deployed all-NPU bundle both ways:
    ``quantkit_wikitext`` 43.80 → 43.45, validation 22.08 → 22.54.
    ``importance`` weights the errors per input as in :func:`weight_scales_per_channel`
    (same measurement with the Hessian diagonal: 22.08). ``full_range``: codes in
    [−2^(b−1), 2^(b−1) − 1] (the grid of block-offset weights, see :func:`block_offsets`).
    """
    out_features, in_features = weight.shape
    if block_size < 1 or in_features % block_size:
        raise ValueError(f"block size: got {block_size}, expected a divisor of the {in_features} input features")
    weight = weight.detach().float()
    blocks = weight.reshape(out_features * (in_features // block_size), block_size)
    weighting = None if importance is None else importance.float().reshape(1, -1, block_size).expand(out_features, -1, -1)
    block_scales = weight_scales_per_channel(blocks, num_bits, rule, None if weighting is None else weighting.reshape(blocks.shape), full_range).reshape(
        out_features, -1
    )
    channel_scales = torch.clamp(block_scales.amax(dim=1) / max_block_scale, min=MIN_SCALE)
    if rule == "max":
        return channel_scales, torch.clamp(torch.round(block_scales / channel_scales[:, None]), 1, max_block_scale).to(torch.uint8)
    blocks = blocks.reshape(out_features, -1, block_size)
    # Rows are independent; searched a few hundred thousand weights at a time, the 17 × 16
    # trial grids stay in cache (same result, 2-4x faster on SmolLM2's 1536 x 576 Linears).
    rows = max(1, _LPBQ_SEARCH_ELEMENTS // in_features)
    searched = [
        _best_channel_scales(
            blocks[start : start + rows],
            channel_scales[start : start + rows],
            num_bits,
            max_block_scale,
            None if weighting is None else weighting[start : start + rows],
            full_range,
        )
        for start in range(0, out_features, rows)
    ]
    return torch.cat([scales for scales, _ in searched]), torch.cat([integers for _, integers in searched]).to(torch.uint8)


def _best_channel_scales(
    blocks: torch.Tensor, channel_scales: torch.Tensor, num_bits: int, max_block_scale: int, weighting: torch.Tensor | None, full_range: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``blocks`` [out, n, B]: (the s_j among ``_LPBQ_CHANNEL_SCALE_FACTORS`` ×
    ``channel_scales`` whose best block integers give the row the least error, those integers)."""
    best_scales, best_integers, best_errors = None, None, None
    for factor in _LPBQ_CHANNEL_SCALE_FACTORS:
        scales = channel_scales * factor
        integers, errors = _best_block_integers(blocks, scales, num_bits, max_block_scale, weighting, full_range)
        row_errors = errors.sum(dim=1)
        if best_errors is None:
            best_scales, best_integers, best_errors = scales, integers, row_errors
        else:
            better = row_errors < best_errors
            best_scales, best_integers, best_errors = (
                torch.where(better, scales, best_scales),
                torch.where(better[:, None], integers, best_integers),
                torch.where(better, row_errors, best_errors),
            )
    return best_scales, best_integers


def _best_block_integers(
    blocks: torch.Tensor, channel_scales: torch.Tensor, num_bits: int, max_block_scale: int, weighting: torch.Tensor | None, full_range: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``blocks`` [out, n, B]: (the k ∈ 1…K whose grid s_j · k gives the least
    (weighted) rounding-plus-clipping error, that error), both [out, n]."""
    best_integers, best_errors = None, None
    for k in range(1, max_block_scale + 1):
        scales = (channel_scales * k)[:, None, None]
        errors = _rounding_errors(blocks, scales, num_bits, full_range, weighting)
        if best_integers is None:
            best_integers, best_errors = torch.full_like(errors, k), errors
        else:
            better = errors < best_errors
            best_integers, best_errors = torch.where(better, float(k), best_integers), torch.where(better, errors, best_errors)
    return best_integers, best_errors


def block_offsets(weight: torch.Tensor, block_size: int, num_bits: int = 4, offset_bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Block offsets of a [out, in] weight for LPBQ with offsets: (int codes [out, in / B],
    float32 per-channel scales [out]) of O = B · o, o the centre of the block's asymmetric
    min/max grid — with d = (max − min) / (2^b − 1) the block's 2^b levels are
    min + d · {0 … 2^b − 1} = o + d · {−2^(b−1) … 2^(b−1) − 1}, so o = min + 2^(b−1) · d
    (GGUF's Q4_1 blocks are this grid: their weights come back exactly up to the
    rounding of o and of the LPBQ block scale). O is quantized symmetric per row at
    ``offset_bits``; the weight minus the quantized offsets then goes on a symmetric
    full-range LPBQ grid (:func:`lpbq_scales` with ``full_range``).
    """
    out_features, in_features = weight.shape
    if block_size < 1 or in_features % block_size:
        raise ValueError(f"block size: got {block_size}, expected a divisor of the {in_features} input features")
    blocks = weight.detach().float().reshape(out_features, in_features // block_size, block_size)
    low, high = blocks.amin(dim=-1), blocks.amax(dim=-1)
    centres = low + 2 ** (num_bits - 1) * (high - low) / (2**num_bits - 1)
    products = centres * block_size  # O = B · o: the weight of the block means
    scales = symmetric_scale(products.abs().amax(dim=1), offset_bits)
    return quantize_symmetric(products, scales, offset_bits, axis=0), scales


def quantize_weight_per_channel(weight: torch.Tensor, num_bits: int = 8, rule: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel fake quantization of a [out, in] weight:
    (dequantized weight, per-channel scales), scales by ``rule`` (see
    :func:`weight_scales_per_channel`)."""
    scales = weight_scales_per_channel(weight, num_bits, rule)
    return fake_quantize_symmetric(weight.detach(), scales, num_bits, axis=0), scales


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(Σ ref² / Σ (ref - approx)²), in dB."""
    reference = reference.double()
    noise = (reference - approximation.double()).pow(2).sum()
    signal = reference.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def _broadcast_scale(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if axis is None or scale.ndim == 0:
        return scale
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.reshape(shape)

"""The NPU weights of a calibration: scales by rule, codes by rounding (orchestration;
the math is ``quant_primitives`` and ``weights.gptq``).

Formats (``runtime.qdq.QuantizedWeight``): INT8 or INT4 symmetric per output channel, or
LPBQ blockwise INT4 (``block_size`` inputs a block). Rounding: ``"nearest"`` (every code
the nearest grid point) or ``"gptq"`` (error-compensating, against the calibration
Hessians of the sites' clipped inputs; see ``weights.gptq``). LPBQ may carry block
offsets (``runtime.qdq``): the offsets are fixed first, then the rest of the weight is
rounded onto the full-range LPBQ grid, GPTQ compensating the offsets' rounding too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from quantkit.models.architecture import DecoderLayout
from quantkit.quant_primitives import block_offsets, lpbq_scales, quantize_symmetric, weight_scales_per_channel
from quantkit.runtime.qdq import LPBQ_MAX_BLOCK_SCALE, OFFSET_FORMATS, QuantizedWeight, offsets_per_input, packed_weight_bytes, weight_grid
from quantkit.tensor_files import save_tensors_streaming
from quantkit.weights.gptq import gptq_codes

__all__ = [
    "WeightCodes",
    "WEIGHT_ROUNDINGS",
    "WEIGHT_BLOCK_OFFSETS",
    "WEIGHTS_FILE",
    "quantize_weight",
    "quantized_weights",
    "save_weights",
    "load_weights",
    "int8_weight_bytes",
]

WeightCodes = dict[str, QuantizedWeight]  # Linear name → its NPU weight
WEIGHT_ROUNDINGS = ("nearest", "gptq")
WEIGHT_BLOCK_OFFSETS = ("none", *OFFSET_FORMATS)  # LPBQ symmetric, or with an offset per block (runtime.qdq)
WEIGHTS_FILE = "weights.safetensors"


def quantize_weight(
    weight: torch.Tensor,
    bits: int = 8,
    rule: str = "mse",
    block_size: int | None = None,
    rounding: str = "nearest",
    hessian: torch.Tensor | None = None,
    offsets: str = "none",
) -> QuantizedWeight:
    """One [out, in] weight on the NPU grid: scales by ``rule`` (per channel, or LPBQ per
    block of ``block_size``), codes by ``rounding`` (``"gptq"`` needs the ``hessian``).
    Given a ``hessian``, the ``"mse"`` scales weight each input's error by its diagonal
    (the layer's output error, see ``quant_primitives.weight_scales_per_channel``).
    ``offsets``: LPBQ with block offsets in that ``runtime.qdq.OFFSET_FORMATS`` format
    (``quant_primitives.block_offsets``), or ``"none"``."""
    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"weight rounding: got {rounding!r}, expected one of {WEIGHT_ROUNDINGS}")
    if offsets not in WEIGHT_BLOCK_OFFSETS:
        raise ValueError(f"block offsets: got {offsets!r}, expected one of {', '.join(WEIGHT_BLOCK_OFFSETS)}")
    with_offsets = offsets != "none"
    if with_offsets and not (block_size and bits == 4):
        raise ValueError(f"block offsets need 4-bit LPBQ weights, got {bits}-bit with block size {block_size}")
    weight = weight.detach().float().cpu()
    importance = None if hessian is None else torch.diagonal(hessian).float().cpu()
    block_scales = offset_codes = offset_scales = None
    offset_bits = OFFSET_FORMATS.get(offsets, 8)  # 8: QuantizedWeight's default, unused without offsets
    if with_offsets:
        offset_codes, offset_scales = block_offsets(weight, block_size, bits, offset_bits)
        weight = weight - offsets_per_input(offset_codes.float() * offset_scales[:, None], block_size)  # what the LPBQ codes must hold
        offset_codes = offset_codes.to(torch.int8)
    if block_size:
        scales, block_scales = lpbq_scales(weight, block_size, bits, rule, LPBQ_MAX_BLOCK_SCALE, importance, full_range=with_offsets)
    else:
        scales = weight_scales_per_channel(weight, bits, rule, importance)
    grid = weight_grid(scales, block_scales, block_size or None)
    if rounding == "gptq":
        if hessian is None:
            raise ValueError("GPTQ rounding needs the calibration Hessian of the layer's inputs")
        codes = gptq_codes(weight, hessian, grid, bits, full_range=with_offsets)
    else:
        codes = quantize_symmetric(weight, grid, bits, full_range=with_offsets).to(torch.int8)
    return QuantizedWeight(codes, scales, bits, block_size or None, block_scales, offset_codes, offset_scales, offset_bits)


def quantized_weights(
    layout: DecoderLayout,
    names: Iterable[str],
    rule: str,
    bits: int = 8,
    block_size: int | None = None,
    rounding: str = "nearest",
    hessians: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    offsets: str = "none",
) -> WeightCodes:
    """The NPU weights of the named Linears, all in one format (see :func:`quantize_weight`).
    A Linear with a bias keeps per-channel scales (and no offsets) under ``block_size``:
    the HTP loads an LPBQ MatMul only without a bias Add (probed on onnxruntime-qnn 2.7)."""
    names = list(names)
    codes = {}
    for name in tqdm(names, desc=f"W{bits} weights ({rounding})", unit="linear", disable=not progress):
        linear = layout.linear(name)
        blocks = block_size if block_size and linear.bias is None else None
        codes[name] = quantize_weight(
            linear.weight, bits, rule, blocks, rounding, None if hessians is None else hessians.get(name), offsets if blocks is not None else "none"
        )
    return codes


def int8_weight_bytes(layout: DecoderLayout, names: Iterable[str]) -> int:
    """Bytes of the named Linears as INT8 per-channel weights (codes + float32 scales): the
    reference a 4-bit bundle's weight bytes are compared with."""
    return sum(packed_weight_bytes(layout.linear(n).out_features, layout.linear(n).in_features) for n in names)


def save_weights(weights: WeightCodes, path: Path) -> None:
    """The weights as safetensors: ``<name>.codes`` / ``.scales`` / ``.block_scales`` /
    ``.offset_codes`` / ``.offset_scales``; bits, block size and offset bits in the metadata."""
    tensors, metadata = {}, {}
    for name, weight in weights.items():
        tensors[f"{name}.codes"] = weight.codes.contiguous()
        tensors[f"{name}.scales"] = weight.scales.contiguous()
        if weight.block_scales is not None:
            tensors[f"{name}.block_scales"] = weight.block_scales.contiguous()
        if weight.has_offsets:
            tensors[f"{name}.offset_codes"] = weight.offset_codes.contiguous()
            tensors[f"{name}.offset_scales"] = weight.offset_scales.contiguous()
        metadata[name] = f"{weight.bits}:{weight.block_size or 0}:{weight.offset_bits}"
    save_tensors_streaming(tensors, path, metadata)  # written as they are, no bytes copy of every code


def load_weights(path: Path) -> WeightCodes:
    """The weights :func:`save_weights` wrote."""
    with safe_open(str(path), "pt") as handle:
        stored = set(handle.keys())
        weights = {}
        for name, value in (handle.metadata() or {}).items():
            bits, block, *offset_bits = (int(v) for v in value.split(":"))  # offset bits: written since int4 offsets
            optional = {
                key: handle.get_tensor(f"{name}.{key}") if f"{name}.{key}" in stored else None for key in ("block_scales", "offset_codes", "offset_scales")
            }
            weights[name] = QuantizedWeight(
                handle.get_tensor(f"{name}.codes"),
                handle.get_tensor(f"{name}.scales"),
                bits,
                block or None,
                **optional,
                offset_bits=offset_bits[0] if offset_bits else 8,
            )
    return weights

"""The deployed arithmetic of one NPU Linear, defined once (arXiv 2407.05858 §3.3).

Calibration's evaluations (sensitivity, precision search, placement, the summary's
perplexity), the export (which serialises these records into QDQ ONNX graphs) and the
runtime's torch twin of a graph (read back from the graph's initializers) all compute a
quantized Linear with :class:`QdqLinear` — one definition, so what calibration measures
is what ships. Pure torch and dependency-free: the runtime imports it.

Per Linear, for an input x already clipped on the CPU at the site's threshold t
(the excess x − clip(x) goes to the FP shadow path, Eq. 1):

    q_x = clamp(round(x / s_x), −2^(b−1), 2^(b−1)−1) · s_x          s_x = t / (2^(b−1) − 1)
    W   = codes_W · s_W            (int8 or int4 codes, per output channel)
    W   = codes_W · s_W[j] · k[j, i // B]                               (LPBQ, blockwise INT4)
    y   = q_x · Wᵀ + codes_b · (s_x · s_W)                          (INT32 bias)
    out = clamp(round(y / s_y), −2^(b−1), 2^(b−1)−1) · s_y          s_y = output clip / (2^(b−1) − 1)

``round`` is half to even and the clamp is the full signed range, as ONNX
QuantizeLinear defines them (QNN HTP and ONNX Runtime implement that operator); b is
the graph's activation bit-width (8 or 16; HTP runs int8-in/int8-out and
int16-in/int16-out graphs with int8 weights, and 4-bit weights only with 16-bit
activations). Scales are float32, as the graph stores them.

4-bit weights come per output channel or blockwise along the input dimension in the form
the HTP runs, low-power blockwise quantization (LPBQ, as AIMET's grouped blockwise
quantization defines it): each block of B inputs of row j has the scale s_W[j] · k[j, blk],
a float per-channel scale times an integer k in 1…16 = 2^(8−4), so the block grid is a
sub-grid of one 8-bit per-channel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ACTIVATION_BITS", "WEIGHT_BITS", "LPBQ_MAX_BLOCK_SCALE", "QuantizedWeight", "weight_grid", "packed_weight_bytes", "activation_scale", "fake_quantize_activation", "quantize_activation", "int32_bias_scales", "int32_bias_codes", "QdqLinear"]

ACTIVATION_BITS = (8, 16)
WEIGHT_BITS = (4, 8)
LPBQ_MAX_BLOCK_SCALE = 2 ** (8 - 4)  # LPBQ block scales k ∈ 1…16 expand 4-bit codes onto an 8-bit grid
_MIN_SCALE = 1e-8  # an all-zero range still gets a usable encoding


def _check_bits(bits: int) -> None:
    if bits not in ACTIVATION_BITS:
        raise ValueError(f"activation bits: got {bits!r}, expected one of {ACTIVATION_BITS}")


def activation_scale(clip: float, bits: int) -> float:
    """Per-tensor symmetric scale s = clip / (2^(b−1) − 1), rounded to float32 (what the graph stores)."""
    _check_bits(bits)
    return float(torch.tensor(max(float(clip) / (2 ** (bits - 1) - 1), _MIN_SCALE), dtype=torch.float32))


def quantize_activation(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """ONNX QuantizeLinear with zero point 0: clamp(round_half_even(x / s), −2^(b−1), 2^(b−1)−1), as float codes."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x.float() / torch.tensor(scale, dtype=torch.float32)), low, high)


def fake_quantize_activation(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear: codes · s."""
    return quantize_activation(x, scale, bits) * torch.tensor(scale, dtype=torch.float32)


def int32_bias_scales(input_scale: float, weight_scales: torch.Tensor) -> torch.Tensor:
    """s_b = s_x · s_W per output channel (float32): the INT32 bias shares the accumulator's scale."""
    return (torch.tensor(input_scale, dtype=torch.float64) * weight_scales.double()).float()


def int32_bias_codes(bias: torch.Tensor, bias_scales: torch.Tensor) -> torch.Tensor:
    """round_half_even(b / s_b) as int32."""
    return torch.round(bias.detach().float().cpu() / bias_scales).to(torch.int32)


def weight_grid(scales: torch.Tensor, block_scales: torch.Tensor | None = None, block_size: int | None = None) -> torch.Tensor:
    """The scale of every weight: [out, 1] per channel, or [out, in] for LPBQ blocks,
    s_W[j] · k[j, blk] (exact in float32)."""
    if block_scales is None:
        return scales.float()[:, None]
    return (scales.float()[:, None] * block_scales.float()).repeat_interleave(block_size, dim=1)


def packed_weight_bytes(out_features: int, in_features: int, bits: int = 8, block_size: int | None = None) -> int:
    """Bytes of a weight packed: codes at ``bits`` each, float32 per-channel scales, uint8 LPBQ block scales."""
    block_bytes = 0 if block_size is None else out_features * (in_features // block_size)
    return out_features * in_features * bits // 8 + 4 * out_features + block_bytes


@dataclass(frozen=True)
class QuantizedWeight:
    """A Linear's NPU weight: signed integer codes [out, in] (stored int8, within
    ±(2^(b−1) − 1) for b = ``bits``), float32 per-output-channel scales [out] and, for
    LPBQ blocks of ``block_size`` inputs, uint8 block scales [out, in / block_size] in
    1…16 multiplying them."""

    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # float32 [out]
    bits: int = 8
    block_size: int | None = None
    block_scales: torch.Tensor | None = None  # uint8 [out, in // block_size]

    def __post_init__(self) -> None:
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"weight bits: got {self.bits!r}, expected one of {WEIGHT_BITS}")
        if (self.block_size is None) != (self.block_scales is None):
            raise ValueError("QuantizedWeight: a block size and block scales come together")
        if self.block_size is not None:
            out_features, in_features = self.codes.shape
            if self.bits != 4 or in_features % self.block_size or tuple(self.block_scales.shape) != (out_features, in_features // self.block_size):
                raise ValueError(f"QuantizedWeight: LPBQ needs 4-bit codes and block scales [{out_features}, {in_features} / {self.block_size}], got {self.bits}-bit, {tuple(self.block_scales.shape)}")

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * weight_grid(self.scales, self.block_scales, self.block_size)

    @property
    def nbytes(self) -> int:
        """Bytes the weight takes packed (:func:`packed_weight_bytes`)."""
        return packed_weight_bytes(*self.codes.shape, self.bits, self.block_size)

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        blocks = None if self.block_scales is None else self.block_scales.to(device)
        return QuantizedWeight(self.codes.to(device), self.scales.to(device), self.bits, self.block_size, blocks)


@dataclass(frozen=True)
class QdqLinear:
    """Everything one NPU Linear computes with: its quantized weight, optional INT32 bias
    codes and scales, the input and output scales and the activation bit-width."""

    weight: QuantizedWeight
    input_scale: float
    output_scale: float | None  # None only while calibration records the output ranges: float output
    bits: int
    bias_codes: torch.Tensor | None = None  # int32 [out]
    bias_scales: torch.Tensor | None = None  # float32 [out] = s_x · s_W
    _weight: torch.Tensor = field(init=False, repr=False, compare=False)
    _bias: torch.Tensor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.weight.bits == 4 and self.bits != 16:
            raise ValueError(f"QdqLinear: the HTP runs 4-bit weights only with 16-bit activations, got {self.bits}-bit activations")
        if (self.bias_codes is None) != (self.bias_scales is None):
            raise ValueError("QdqLinear: bias codes and bias scales come together")
        object.__setattr__(self, "_weight", self.weight.dequantize())
        object.__setattr__(self, "_bias", None if self.bias_codes is None else self.bias_codes.float() * self.bias_scales.float())

    @property
    def out_features(self) -> int:
        return self.weight.codes.shape[0]

    def to(self, device: torch.device | str) -> "QdqLinear":
        """The same record with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QdqLinear(self.weight.to(device), self.input_scale, self.output_scale, self.bits, move(self.bias_codes), move(self.bias_scales))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """y = Q(x) · Wᵀ + b before output requantization (the graph's MatMul + Add)."""
        return torch.nn.functional.linear(fake_quantize_activation(x, self.input_scale, self.bits), self._weight, self._bias)

    def requantize_output(self, y: torch.Tensor) -> torch.Tensor:
        """The graph's output QuantizeLinear/DequantizeLinear."""
        if self.output_scale is None:
            raise ValueError("QdqLinear: no output range yet (calibrate the output ranges first)")
        return fake_quantize_activation(y, self.output_scale, self.bits)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.requantize_output(self.accumulate(x))

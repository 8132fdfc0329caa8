"""The deployed arithmetic of one NPU Linear, defined once (arXiv 2407.05858 §3.3).

Calibration's evaluations (sensitivity, precision search, placement, the summary's
perplexity), the export (which serialises these records into QDQ ONNX graphs) and the
runtime's torch twin of a graph (read back from the graph's initializers) all compute a
quantized Linear with :class:`QdqLinear` — one definition, so what calibration measures
is what ships. Pure torch and dependency-free: the runtime imports it.

Per Linear, for an input x already clipped on the CPU at the site's threshold t
(the excess x − clip(x) goes to the FP shadow path, Eq. 1):

    q_x = clamp(round(x / s_x), −2^(b−1), 2^(b−1)−1) · s_x          s_x = t / (2^(b−1) − 1)
    W   = codes_W · s_W            (int8 codes, per output channel)
    y   = q_x · Wᵀ + codes_b · (s_x · s_W)                          (INT32 bias)
    out = clamp(round(y / s_y), −2^(b−1), 2^(b−1)−1) · s_y          s_y = output clip / (2^(b−1) − 1)

``round`` is half to even and the clamp is the full signed range, as ONNX
QuantizeLinear defines them (QNN HTP and ONNX Runtime implement that operator); b is
the graph's activation bit-width (8 or 16; HTP runs int8-in/int8-out and
int16-in/int16-out graphs with int8 weights). Scales are float32, as the graph stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ACTIVATION_BITS", "activation_scale", "fake_quantize_activation", "quantize_activation", "int32_bias_scales", "int32_bias_codes", "QdqLinear"]

ACTIVATION_BITS = (8, 16)
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


@dataclass(frozen=True)
class QdqLinear:
    """Everything one NPU Linear computes with: int8 weight codes [out, in] and their
    per-channel scales, optional INT32 bias codes and scales, the input and output
    scales and the activation bit-width."""

    weight_codes: torch.Tensor  # int8 [out, in]
    weight_scales: torch.Tensor  # float32 [out]
    input_scale: float
    output_scale: float | None  # None only while calibration records the output ranges: float output
    bits: int
    bias_codes: torch.Tensor | None = None  # int32 [out]
    bias_scales: torch.Tensor | None = None  # float32 [out] = s_x · s_W
    _weight: torch.Tensor = field(init=False, repr=False, compare=False)
    _bias: torch.Tensor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if (self.bias_codes is None) != (self.bias_scales is None):
            raise ValueError("QdqLinear: bias codes and bias scales come together")
        object.__setattr__(self, "_weight", self.weight_codes.float() * self.weight_scales.float()[:, None])
        object.__setattr__(self, "_bias", None if self.bias_codes is None else self.bias_codes.float() * self.bias_scales.float())

    @property
    def out_features(self) -> int:
        return self.weight_codes.shape[0]

    def to(self, device: torch.device | str) -> "QdqLinear":
        """The same record with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QdqLinear(move(self.weight_codes), move(self.weight_scales), self.input_scale, self.output_scale, self.bits, move(self.bias_codes), move(self.bias_scales))

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

"""The deployed arithmetic of one NPU Linear, defined once (arXiv 2407.05858 §3.3).

Calibration's evaluations (sensitivity, precision search, placement, the summary's
perplexity), the export (which serialises these records into QDQ ONNX graphs) and the
runtime's torch twin of a graph (read back from the graph's initializers) all compute a
quantized Linear with :class:`QdqLinear` — one definition, so what calibration measures
is what ships. Pure torch over ``quantkit.quant_primitives`` (the scale rule): the runtime
imports it.

Per Linear, for an input x already clipped on the CPU at the site's threshold t
(the excess x − clip(x) goes to the FP shadow path, Eq. 1):

    q_x = clamp(round(x / s_x), −2^(b−1), 2^(b−1)−1) · s_x          s_x = t / (2^(b−1) − 1)
    W   = codes_W · s_W            (int8 or int4 codes, per output channel)
    W   = codes_W · s_W[j] · k[j, i // B]                               (LPBQ, blockwise INT4)
    y   = q_x · Wᵀ + codes_b · (s_x · s_W)                          (INT32 bias)
    out = clamp(round(y / s_y), −2^(c−1), 2^(c−1)−1) · s_y          s_y = output clip / (2^(c−1) − 1)

``round`` is half to even and the clamp is the full signed range, as ONNX
QuantizeLinear defines them (QNN HTP and ONNX Runtime implement that operator); b is
the graph's input bit-width and c its output bit-width (8 or 16 each). The MACs run at
the input's width; an int8 input with an int16 output keeps int8 × int8 MACs and writes
the result on a 65,535-step grid (MobileQuant, arXiv 2408.13933): the outputs go to the
CPU (attention, SiLU·up, the residual stream) in float, so an 8-bit output grid would be
pure loss. HTP runs int8-in/int8-out, int8-in/int16-out and int16-in/int16-out graphs
with int8 weights, and 4-bit weights only with 16-bit activations. Scales are float32,
as the graph stores them.

4-bit weights come per output channel or blockwise along the input dimension in the form
the HTP runs, low-power blockwise quantization (LPBQ, as AIMET's grouped blockwise
quantization defines it): each block of B inputs of row j has the scale s_W[j] · k[j, blk],
a float per-channel scale times an integer k in 1…16 = 2^(8−4), so the block grid is a
sub-grid of one 8-bit per-channel grid.

LPBQ with block offsets adds an asymmetric part the HTP runs as a second, small MatMul
beside the LPBQ one (QNN's LPBQ itself has no zero points). Each block of row j gets a
real offset o[j, blk], held as the per-channel weight O[j, blk] = B · o[j, blk] ≈
codes_O[j, blk] · s_O[j] (int8 or int4 codes, OFFSET_FORMATS) applied to the block means
of the quantized input; codes then span the full [−8, 7]:

    W[j, i] = codes_W[j, i] · s_W[j] · k[j, blk] + o[j, blk]               (blk = i // B)
    m       = clamp(round(mean_B(q_x) / s_m), …) · s_m                    (block means, [in / B])
    y       = Q_p(q_x · W_codesᵀ) + Q_p(m · Oᵀ)                    s_p = PART_RANGE · s_y

The block means have their own grid, s_m = means clip / (2^(b−1) − 1), the clip being
the largest |block mean| recorded over calibration text (a graph stores its s_m; bundles
without one, and the recording pass itself, use s_x): the HTP computes the offset MatMul
accurately only while its requantization multiplier s_m · s_O / s_p stays well below 1,
and a mean of B inputs rarely comes near the input's clip. Both partial products are
requantized before their Add (the HTP needs a quantized tensor between the MatMuls and
the Add), on the output's own grid (PART_RANGE = 1): a coarser grid saturates nothing but
costs the HTP's output its accuracy. For weights that were asymmetric 4-bit blocks before
(GGUF Q4_1, the built-in model), this reproduces their grid up to the rounding of k and
of the offsets. The measurements behind these choices are in docs/notes-runtime-qdq.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from quantkit.quant_primitives import symmetric_scale

__all__ = [
    "ACTIVATION_BITS",
    "WEIGHT_BITS",
    "LPBQ_MAX_BLOCK_SCALE",
    "OFFSET_FORMATS",
    "PART_RANGE",
    "QuantizedWeight",
    "block_means",
    "offsets_per_input",
    "weight_grid",
    "packed_weight_bytes",
    "activation_scale",
    "fake_quantize_activation",
    "quantize_activation",
    "int32_bias_scales",
    "int32_bias_codes",
    "QdqLinear",
]

ACTIVATION_BITS = (8, 16)
WEIGHT_BITS = (4, 8)
LPBQ_MAX_BLOCK_SCALE = 2 ** (8 - 4)  # LPBQ block scales k ∈ 1…16 expand 4-bit codes onto an 8-bit grid
# Block-offset weight formats: name → bits of the codes; both keep a float32 scale per
# output channel (one scale per tensor loses what the offsets buy; docs/notes-runtime-qdq.md).
OFFSET_FORMATS = {"int8": 8, "int4": 4}
PART_RANGE = 1.0  # partial products of an offset Linear: requantized on the output's grid (module docstring)


def _check_bits(bits: int) -> None:
    if bits not in ACTIVATION_BITS:
        raise ValueError(f"activation bits: got {bits!r}, expected one of {ACTIVATION_BITS}")


def activation_scale(clip: float, bits: int) -> float:
    """Per-tensor symmetric scale s = clip / (2^(b−1) − 1), rounded to float32 (what the graph stores)."""
    _check_bits(bits)
    return float(symmetric_scale(torch.tensor(float(clip), dtype=torch.float64), bits))


def quantize_activation(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """ONNX QuantizeLinear with zero point 0: clamp(round_half_even(x / s), −2^(b−1), 2^(b−1)−1), as float codes."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = x.float() / torch.tensor(scale, dtype=torch.float32)  # a new tensor: rounded and clamped in place
    return codes.round_().clamp_(low, high)


def fake_quantize_activation(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear: codes · s."""
    return quantize_activation(x, scale, bits).mul_(torch.tensor(scale, dtype=torch.float32))


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


def packed_weight_bytes(out_features: int, in_features: int, bits: int = 8, block_size: int | None = None, block_offsets: str = "none") -> int:
    """Bytes of a weight packed: codes at ``bits`` each, float32 per-channel scales, uint8 LPBQ
    block scales and, with ``block_offsets`` (an ``OFFSET_FORMATS`` name), the offset codes
    and their float32 per-channel scales."""
    block_bytes = 0 if block_size is None else out_features * (in_features // block_size)
    offset_bytes = 0 if block_offsets == "none" else (block_bytes * OFFSET_FORMATS[block_offsets] + 7) // 8 + 4 * out_features
    return out_features * in_features * bits // 8 + 4 * out_features + block_bytes + offset_bytes


def offsets_per_input(offset_weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Each block's offset o = O / B on every input of the block, [out, in / B] → [out, in]."""
    return (offset_weight / block_size).repeat_interleave(block_size, dim=1)


def block_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Means of consecutive blocks of ``block_size`` features, [..., in] → [..., in / B]
    (the graph's Reshape + ReduceMean)."""
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size).mean(dim=-1)


@dataclass(frozen=True)
class QuantizedWeight:
    """A Linear's NPU weight: signed integer codes [out, in] (stored int8, within
    ±(2^(b−1) − 1) for b = ``bits``), float32 per-output-channel scales [out] and, for
    LPBQ blocks of ``block_size`` inputs, uint8 block scales [out, in / block_size] in
    1…16 multiplying them; optionally block offsets: codes [out, in / block_size] (stored
    int8, within the ``offset_bits`` range) and float32 scales [out] of O = B · o (module
    docstring), codes then within [−8, 7]."""

    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # float32 [out]
    bits: int = 8
    block_size: int | None = None
    block_scales: torch.Tensor | None = None  # uint8 [out, in // block_size]
    offset_codes: torch.Tensor | None = None  # int8 [out, in // block_size]
    offset_scales: torch.Tensor | None = None  # float32 [out]
    offset_bits: int = 8

    def __post_init__(self) -> None:
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"weight bits: got {self.bits!r}, expected one of {WEIGHT_BITS}")
        if (self.block_size is None) != (self.block_scales is None):
            raise ValueError("QuantizedWeight: a block size and block scales come together")
        if self.block_size is not None:
            out_features, in_features = self.codes.shape
            if self.bits != 4 or in_features % self.block_size or tuple(self.block_scales.shape) != (out_features, in_features // self.block_size):
                raise ValueError(
                    f"QuantizedWeight: LPBQ needs 4-bit codes and block scales [{out_features}, {in_features} / {self.block_size}], got {self.bits}-bit, {tuple(self.block_scales.shape)}"
                )
        if (self.offset_codes is None) != (self.offset_scales is None):
            raise ValueError("QuantizedWeight: offset codes and offset scales come together")
        if self.offset_codes is not None and (self.block_size is None or self.offset_codes.shape != self.block_scales.shape):
            raise ValueError("QuantizedWeight: block offsets need LPBQ blocks, one offset per block")
        if self.offset_codes is not None and self.offset_format is None:
            raise ValueError(f"QuantizedWeight: block offsets are {', '.join(f'{bits}-bit' for bits in OFFSET_FORMATS.values())}, got {self.offset_bits}-bit")
        if self.offset_codes is not None and tuple(self.offset_scales.shape) != (self.codes.shape[0],):
            raise ValueError(f"QuantizedWeight: block offsets have a scale per output channel, [{self.codes.shape[0]}], got {tuple(self.offset_scales.shape)}")

    @property
    def offset_format(self) -> str | None:
        """The ``OFFSET_FORMATS`` name of the block offsets ("none" without any; None for a
        bit-width no format has)."""
        if self.offset_codes is None:
            return "none"
        return next((name for name, bits in OFFSET_FORMATS.items() if bits == self.offset_bits), None)

    @property
    def has_offsets(self) -> bool:
        return self.offset_codes is not None

    def offset_weight(self) -> torch.Tensor:
        """O = codes_O · s_O [out, in / B], the weight of the block means."""
        return self.offset_codes.float() * self.offset_scales.float()[:, None]

    def code_weight(self) -> torch.Tensor:
        """codes · grid [out, in]: the LPBQ MatMul's weight (without the block offsets)."""
        return self.codes.float() * weight_grid(self.scales, self.block_scales, self.block_size)

    def dequantize(self) -> torch.Tensor:
        """The real weight [out, in]: the codes on their grid plus each block's offset o = O / B."""
        weight = self.code_weight()
        if self.has_offsets:
            weight = weight + offsets_per_input(self.offset_weight(), self.block_size)
        return weight

    @property
    def nbytes(self) -> int:
        """Bytes the weight takes packed (:func:`packed_weight_bytes`)."""
        return packed_weight_bytes(*self.codes.shape, self.bits, self.block_size, self.offset_format)

    def with_rows_zeroed(self, rows: list[int]) -> QuantizedWeight:
        """The same weight with output ``rows`` (codes and offsets) zero."""
        codes = self.codes.clone()
        codes[rows] = 0
        offsets = None if self.offset_codes is None else self.offset_codes.clone()
        if offsets is not None:
            offsets[rows] = 0
        return replace(self, codes=codes, offset_codes=offsets)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            codes=self.codes.to(device),
            scales=self.scales.to(device),
            block_scales=move(self.block_scales),
            offset_codes=move(self.offset_codes),
            offset_scales=move(self.offset_scales),
        )


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
    means_scale: float | None = None  # s_m of the block means (offset Linears); None: s_x
    output_bits: int | None = None  # c, the output's width; None: the input's (``bits``)
    _offset_weight: torch.Tensor | None = field(init=False, repr=False, compare=False)
    _bias: torch.Tensor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        _check_bits(self.out_bits)
        if self.out_bits < self.bits:
            raise ValueError(f"QdqLinear: a {self.bits}-bit input with a {self.out_bits}-bit output; the output is at least as wide as the input")
        if self.weight.bits == 4 and self.bits != 16:
            raise ValueError(f"QdqLinear: the HTP runs 4-bit weights only with 16-bit activations, got {self.bits}-bit activations")
        if (self.bias_codes is None) != (self.bias_scales is None):
            raise ValueError("QdqLinear: bias codes and bias scales come together")
        if self.weight.has_offsets and self.bias_codes is not None:
            raise ValueError("QdqLinear: block offsets come without a bias (LPBQ Linears have none)")
        if self.output_bits == self.bits:  # one spelling of "as wide as the input", so equal records compare equal
            object.__setattr__(self, "output_bits", None)
        object.__setattr__(self, "_offset_weight", self.weight.offset_weight() if self.weight.has_offsets else None)
        object.__setattr__(self, "_bias", None if self.bias_codes is None else self.bias_codes.float() * self.bias_scales.float())

    @property
    def out_features(self) -> int:
        return self.weight.codes.shape[0]

    @property
    def out_bits(self) -> int:
        """c, the output's bit-width."""
        return self.bits if self.output_bits is None else self.output_bits

    def to(self, device: torch.device | str) -> QdqLinear:
        """The same record with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QdqLinear(
            self.weight.to(device),
            self.input_scale,
            self.output_scale,
            self.bits,
            move(self.bias_codes),
            move(self.bias_scales),
            self.means_scale,
            self.output_bits,
        )

    @property
    def block_means_scale(self) -> float:
        """s_m, the grid of the block means (module docstring), float32."""
        return self.input_scale if self.means_scale is None else self.means_scale

    @property
    def part_scale(self) -> float:
        """s_p = PART_RANGE · s_y, the grid of the two partial products of an offset Linear."""
        return float(torch.tensor(PART_RANGE * self.output_scale, dtype=torch.float32))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """y = Q(x) · Wᵀ + b before output requantization (the graph's MatMul + Add); with
        block offsets Q_p(Q(x) · W_codesᵀ) + Q_p(m · Oᵀ) (module docstring), the partial
        products in float while the output ranges are recorded (no output scale yet)."""
        return self.accumulate_quantized(self.quantize_input(x))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x), the graph input's QuantizeLinear/DequantizeLinear (one per graph: the Linears of a site share it)."""
        return fake_quantize_activation(x, self.input_scale, self.bits)

    def accumulate_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        """:meth:`accumulate` from the quantized input Q(x) (:meth:`quantize_input`)."""
        # the float weight is made for each call, not kept: calibration simulates every
        # Linear of a model at once, and a float copy of each would double its memory
        y = torch.nn.functional.linear(quantized, self.weight.code_weight(), self._bias)
        if self._offset_weight is None:
            return y
        means = fake_quantize_activation(block_means(quantized, self.weight.block_size), self.block_means_scale, self.bits)
        offsets = torch.nn.functional.linear(means, self._offset_weight)
        if self.output_scale is None:
            return y + offsets
        return fake_quantize_activation(y, self.part_scale, self.out_bits) + fake_quantize_activation(offsets, self.part_scale, self.out_bits)

    def requantize_output(self, y: torch.Tensor) -> torch.Tensor:
        """The graph's output QuantizeLinear/DequantizeLinear."""
        if self.output_scale is None:
            raise ValueError("QdqLinear: no output range yet (calibrate the output ranges first)")
        return fake_quantize_activation(y, self.output_scale, self.out_bits)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.requantize_output(self.accumulate(x))

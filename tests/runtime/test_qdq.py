"""The deployed arithmetic (runtime/qdq.py), defined once: its rounding and saturation are
ONNX QuantizeLinear's, and the records calibration measures with are the graphs' own."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from quantkit.runtime.qdq import (
    QdqLinear,
    QuantizedWeight,
    activation_scale,
    fake_quantize_activation,
    int32_bias_codes,
    int32_bias_scales,
    quantize_activation,
)
from quantkit.runtime.sessions import cpu_session


def _quantize_linear_model(scale: float, bits: int, length: int) -> onnx.ModelProto:
    dtype = np.int8 if bits == 8 else np.int16
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    initializers = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"), numpy_helper.from_array(np.array(0, dtype=dtype), "z")]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [length])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("bits", [8, 16])
def test_activation_quantization_is_onnx_quantize_linear_bit_for_bit(tmp_path, bits):
    scale = activation_scale(3.0, bits)
    qmax = 2 ** (bits - 1) - 1
    # ties (k + 0.5 steps: half to even), the full signed range (−2^(b−1) is a code) and saturation
    x = torch.cat(
        [
            (torch.arange(-6, 6) + 0.5) * scale,
            torch.tensor([-(qmax + 1) * scale, -(qmax + 5) * scale, (qmax + 5) * scale]),
            torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 2,
        ]
    )
    path = tmp_path / "qdq.onnx"
    path.write_bytes(_quantize_linear_model(scale, bits, x.numel()).SerializeToString())
    (expected,) = cpu_session(path).run(None, {"x": x.numpy()})
    got = fake_quantize_activation(x, scale, bits)
    assert torch.equal(got, torch.from_numpy(expected))
    exact = 0.25  # a power of two: x / s is exact, so the ties below are real ties
    assert quantize_activation(torch.tensor([0.5, 1.5, 2.5, -0.5]) * exact, exact, bits).tolist() == [0.0, 2.0, 2.0, -0.0]
    assert quantize_activation(torch.tensor([-(qmax + 5) * exact, (qmax + 5) * exact]), exact, bits).tolist() == [-(qmax + 1), qmax]


def test_scales_are_float32_and_the_bias_shares_the_accumulator_scale():
    scale = activation_scale(1.0 / 3.0, 8)
    assert scale == float(np.float32(1.0 / 3.0 / 127))
    weight_scales = torch.tensor([0.01, 0.02], dtype=torch.float32)
    bias_scales = int32_bias_scales(scale, weight_scales)
    assert bias_scales.dtype == torch.float32
    assert torch.allclose(bias_scales, torch.tensor([scale * 0.01, scale * 0.02]), rtol=1e-7)
    assert int32_bias_codes(torch.tensor([2.5 * float(bias_scales[0]), -1.0]), bias_scales).dtype == torch.int32


def test_qdq_linear_computes_the_documented_steps():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (5, 7), generator=generator, dtype=torch.int32).to(torch.int8)
    weight_scales = torch.rand(5, generator=generator) * 0.01 + 1e-3
    input_scale, output_scale = activation_scale(2.0, 8), activation_scale(1.5, 8)
    bias_scales = int32_bias_scales(input_scale, weight_scales)
    bias_codes = torch.randint(-1000, 1000, (5,), generator=generator, dtype=torch.int32)
    record = QdqLinear(QuantizedWeight(codes, weight_scales), input_scale, output_scale, 8, bias_codes, bias_scales)
    x = torch.randn(3, 7, generator=generator).clamp(-2, 2)
    q = torch.clamp(torch.round(x / input_scale), -128, 127) * input_scale
    y = q @ (codes.float() * weight_scales[:, None]).T + bias_codes.float() * bias_scales
    expected = torch.clamp(torch.round(y / output_scale), -128, 127) * output_scale
    assert torch.allclose(record(x), expected, atol=1e-6)
    assert torch.allclose(record.accumulate(x), y, atol=1e-6)
    with pytest.raises(ValueError, match="expected one of"):
        QdqLinear(QuantizedWeight(codes, weight_scales), input_scale, output_scale, 4)
    with pytest.raises(ValueError, match="no output range"):
        QdqLinear(QuantizedWeight(codes, weight_scales), input_scale, None, 8)(x)
    with pytest.raises(ValueError, match="only with 16-bit activations"):
        QdqLinear(QuantizedWeight(codes.clamp(-7, 7), weight_scales, bits=4), input_scale, output_scale, 8)


def _weight_dequantize_model(weight_name: str, weight: QuantizedWeight) -> onnx.ModelProto:
    from quantkit.export.graphs import _weight_nodes

    nodes, initializers, _ = _weight_nodes(weight_name, weight)
    nodes.append(helper.make_node("Identity", [f"{weight_name}.dq"], ["w"]))
    graph = helper.make_graph(nodes, "dq", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.codes.T.shape))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("block_size", [None, 32])
def test_int4_weights_dequantize_as_onnx_does_and_read_back(tmp_path, block_size):
    """INT4 per channel and LPBQ blocks: the graph's DequantizeLinear chain gives exactly
    QuantizedWeight.dequantize(), and the records read the same weight back."""
    from quantkit.runtime.npu import _weight_from_graph

    from quantkit.weights.quantize import quantize_weight

    weight = torch.randn(24, 96, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3.0, 96)
    quantized = quantize_weight(weight, bits=4, rule="mse", block_size=block_size)
    assert int(quantized.codes.abs().max()) <= 7
    if block_size:
        assert quantized.block_scales.dtype == torch.uint8 and 1 <= int(quantized.block_scales.min()) and int(quantized.block_scales.max()) == 16
    model = _weight_dequantize_model("lin.weight", quantized)
    path = tmp_path / "w.onnx"
    path.write_bytes(model.SerializeToString())
    (expected,) = cpu_session(path).run(None, {})
    assert torch.equal(quantized.dequantize(), torch.from_numpy(expected).T)
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    back = _weight_from_graph(values, "lin")
    assert back.bits == 4 and back.block_size == block_size and torch.equal(back.dequantize(), quantized.dequantize())
    assert quantized.nbytes == weight.numel() // 2 + 4 * 24 + (24 * 96 // block_size if block_size else 0)  # packed nibbles, scales, uint8 k


def test_lpbq_scales_are_a_sub_grid_of_one_8_bit_grid():
    from quantkit.quant_primitives import lpbq_scales

    weight = torch.randn(8, 128, generator=torch.Generator().manual_seed(2))
    weight[:, :64] *= 10  # one large block per row: the small block gets a small integer multiple
    channel, blocks = lpbq_scales(weight, 64, rule="max")
    assert blocks[:, 0].tolist() == [16] * 8 and (blocks[:, 1] <= 4).all()
    block_max = weight.abs().reshape(8, 2, 64).amax(dim=2) / 7
    assert torch.allclose(channel, block_max[:, 0] / 16)


def test_lpbq_mse_integers_minimise_each_blocks_error_on_the_shipped_grid():
    """``mse`` picks each block's integer on the grid s·k itself: never worse than rounding the
    block's own MSE scale to an integer, and better on some blocks of a real-looking weight."""
    from quantkit.quant_primitives import fake_quantize_symmetric, lpbq_scales

    weight = torch.randn(16, 256, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.2, 3.0, 256)
    channel, chosen = lpbq_scales(weight, 32, rule="mse")
    blocks = weight.reshape(16, 8, 32)

    def block_errors(integers):
        scales = (channel[:, None] * integers.float())[:, :, None]
        return (fake_quantize_symmetric(blocks, scales, 4) - blocks).pow(2).sum(dim=-1)

    from quantkit.quant_primitives import weight_scales_per_channel

    own = weight_scales_per_channel(blocks.reshape(-1, 32), 4, "mse").reshape(16, 8)
    rounded = torch.clamp(torch.round(own / channel[:, None]), 1, 16)
    assert chosen.dtype == torch.uint8 and int(chosen.min()) >= 1 and int(chosen.max()) <= 16
    assert (block_errors(chosen) <= block_errors(rounded) + 1e-9).all()
    assert (block_errors(chosen) < block_errors(rounded) - 1e-9).any()


def test_lpbq_mse_channel_scale_search_never_raises_a_rows_error():
    """``mse`` searches each row's s_j around max_k b_jk / K: every row's error on the
    chosen grid is at most its error with s_j = max_k b_jk / K (that scale is among those
    tried), lower on some rows of a weight whose blocks were asymmetric 4-bit (GGUF Q4_1)."""
    from quantkit.quant_primitives import _best_block_integers, fake_quantize_symmetric, lpbq_scales, weight_scales_per_channel

    weight = _asymmetric_4_bit_blocks(24, 256, 32)
    channel, integers = lpbq_scales(weight, 32, rule="mse", full_range=True)
    blocks = weight.reshape(24, 8, 32)

    def row_errors(scales, ks):
        grid = (scales[:, None] * ks.float())[:, :, None]
        return (fake_quantize_symmetric(blocks, grid, 4, full_range=True) - blocks).pow(2).sum(dim=(1, 2))

    unsearched = weight_scales_per_channel(blocks.reshape(-1, 32), 4, "mse", None, True).reshape(24, 8).amax(dim=1) / 16
    unsearched_integers, _ = _best_block_integers(blocks, unsearched, 4, 16, None, True)
    assert integers.dtype == torch.uint8 and int(integers.min()) >= 1 and int(integers.max()) <= 16
    assert (row_errors(channel, integers) <= row_errors(unsearched, unsearched_integers) + 1e-12).all()
    assert (row_errors(channel, integers) < 0.9 * row_errors(unsearched, unsearched_integers)).any()


def test_lpbq_mse_searches_rows_in_pieces_with_the_whole_weights_result(monkeypatch):
    """The search goes a few rows at a time (rows are independent): the scales and integers
    are those of the whole weight at once, with and without importance."""
    import quantkit.quant_primitives as primitives

    weight = _asymmetric_4_bit_blocks(24, 256, 32)
    importance = torch.rand(256, generator=torch.Generator().manual_seed(5))
    whole = [primitives.lpbq_scales(weight, 32, rule="mse", importance=weighting, full_range=True) for weighting in (None, importance)]
    monkeypatch.setattr(primitives, "_LPBQ_SEARCH_ELEMENTS", 5 * 256)  # pieces of 5 rows, the last one 4
    pieces = [primitives.lpbq_scales(weight, 32, rule="mse", importance=weighting, full_range=True) for weighting in (None, importance)]
    for (scales, integers), (piece_scales, piece_integers) in zip(whole, pieces):
        assert torch.equal(scales, piece_scales) and torch.equal(integers, piece_integers)


def test_importance_weighted_scales_lower_the_weighted_error():
    """With per-input importance (the Hessian diagonal) the ``mse`` clips minimise the
    importance-weighted error: never above the unweighted choice's, lower on some rows; a
    uniform importance chooses exactly the unweighted scales."""
    from quantkit.quant_primitives import fake_quantize_symmetric, lpbq_scales, weight_scales_per_channel

    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 128, generator=generator)
    importance = torch.rand(128, generator=generator) ** 4 * 100  # a few inputs dominate the output

    def weighted_errors(scales):
        return ((fake_quantize_symmetric(weight, scales, 4, axis=0) - weight).pow(2) * importance).sum(dim=1)

    plain, weighted = weight_scales_per_channel(weight, 4, "mse"), weight_scales_per_channel(weight, 4, "mse", importance)
    assert (weighted_errors(weighted) <= weighted_errors(plain) + 1e-6).all() and (weighted_errors(weighted) < weighted_errors(plain) - 1e-6).any()
    assert torch.equal(weight_scales_per_channel(weight, 4, "mse", torch.full((128,), 3.0)), plain)
    uniform = lpbq_scales(weight, 32, 4, "mse", importance=torch.ones(128))
    assert all(torch.equal(a, b) for a, b in zip(uniform, lpbq_scales(weight, 32, 4, "mse")))
    channel, integers = lpbq_scales(weight, 32, 4, "mse", importance=importance)
    assert channel.shape == (32,) and integers.shape == (32, 4)


def _asymmetric_4_bit_blocks(out_features: int, in_features: int, block_size: int, seed: int = 3) -> torch.Tensor:
    """A weight on GGUF Q4_1's grid: per block of ``block_size``, min + d · q with q ∈ 0…15
    (both ends used), d and min varying by block and row."""
    generator = torch.Generator().manual_seed(seed)
    blocks = in_features // block_size
    levels = torch.randint(0, 16, (out_features, blocks, block_size), generator=generator).float()
    levels[..., 0], levels[..., 1] = 0.0, 15.0
    steps = torch.rand(out_features, blocks, 1, generator=generator) * 0.02 + 0.002
    lows = -8 * steps + torch.randn(out_features, blocks, 1, generator=generator) * steps * 2
    return (lows + steps * levels).reshape(out_features, in_features)


def test_block_offsets_bring_back_an_asymmetric_4_bit_grid():
    """LPBQ with block offsets holds an asymmetric 4-bit block grid up to the rounding of k
    and of the offsets — an order of magnitude below symmetric LPBQ on the same blocks."""
    from quantkit.weights.quantize import quantize_weight

    weight = _asymmetric_4_bit_blocks(48, 128, 32)
    symmetric = quantize_weight(weight, bits=4, rule="mse", block_size=32)
    offsets = quantize_weight(weight, bits=4, rule="mse", block_size=32, offsets="int8")
    error = lambda q: float((q.dequantize() - weight).pow(2).sum() / weight.pow(2).sum())  # noqa: E731
    assert error(offsets) < 0.2 * error(symmetric)
    assert int(offsets.codes.min()) == -8 and int(offsets.codes.max()) <= 7  # the full 4-bit range
    assert offsets.offset_codes.dtype == torch.int8 and offsets.offset_codes.shape == offsets.block_scales.shape
    assert offsets.nbytes == symmetric.nbytes + 48 * 128 // 32 + 4 * 48  # int8 offsets and their float32 scales
    with pytest.raises(ValueError, match="4-bit LPBQ"):
        quantize_weight(weight, bits=4, rule="mse", offsets="int8")


def test_int4_block_offsets_sit_between_symmetric_and_int8_offsets_at_half_their_bytes(tmp_path):
    """--weight-block-offsets int4: int4 codes, a float32 scale per row; a coarser offset
    grid than int8's, so the error lies between int8 offsets and none; the offset codes
    take half the bytes; weights.safetensors keeps the offset bit-width."""
    from quantkit.weights.quantize import load_weights, quantize_weight, save_weights

    weight = _asymmetric_4_bit_blocks(48, 128, 32, seed=7)
    error = lambda q: float((q.dequantize() - weight).pow(2).sum() / weight.pow(2).sum())  # noqa: E731
    symmetric, int8, int4 = (quantize_weight(weight, bits=4, rule="mse", block_size=32, offsets=form) for form in ("none", "int8", "int4"))
    assert error(int8) < error(int4) < 0.5 * error(symmetric)
    assert int4.offset_bits == 4 and int4.offset_format == "int4" and int4.offset_scales.shape == (48,)
    assert int(int4.offset_codes.min()) >= -8 and int(int4.offset_codes.max()) <= 7
    assert int4.nbytes == symmetric.nbytes + 48 * 128 // 32 // 2 + 4 * 48  # two offsets a byte, a float32 scale per row
    save_weights({"w": int4}, tmp_path / "weights.safetensors")
    loaded = load_weights(tmp_path / "weights.safetensors")["w"]
    assert loaded.offset_format == "int4" and torch.equal(loaded.dequantize(), int4.dequantize())
    with pytest.raises(ValueError, match="block offsets"):
        quantize_weight(weight, bits=4, rule="mse", block_size=32, offsets="int2")
    with pytest.raises(ValueError, match="block offsets are"):
        QuantizedWeight(int4.codes, int4.scales, 4, 32, int4.block_scales, int4.offset_codes, int4.offset_scales, offset_bits=2)


def test_offset_linear_computes_the_documented_steps():
    """Q_p(Q(x)·W_codesᵀ) + Q_p(m·Oᵀ), m the requantized block means; without an output
    scale (output-range recording) the plain sum, equal to Q(x)·Wᵀ for the real weight."""
    from quantkit.runtime.qdq import PART_RANGE, block_means

    from quantkit.weights.quantize import quantize_weight

    weight = _asymmetric_4_bit_blocks(24, 96, 32, seed=4)
    quantized = quantize_weight(weight, bits=4, rule="mse", block_size=32, offsets="int8")
    input_scale, output_scale = activation_scale(2.0, 16), activation_scale(0.5, 16)
    x = (0.25 * torch.randn(5, 96, generator=torch.Generator().manual_seed(5))).clamp(-2, 2)  # block means within their clip, 0.25
    q = torch.clamp(torch.round(x / input_scale), -32768, 32767) * input_scale
    means_scale = activation_scale(0.25, 16)  # the block means' own grid, finer than the input's
    means = torch.clamp(torch.round(block_means(q, 32) / means_scale), -32768, 32767) * means_scale
    codes_part = q @ quantized.code_weight().T
    offsets_part = means @ (quantized.offset_codes.float() * quantized.offset_scales[:, None]).T
    part = PART_RANGE * output_scale
    requantize = lambda y, s: torch.clamp(torch.round(y / s), -32768, 32767) * s  # noqa: E731
    expected = requantize(requantize(codes_part, part) + requantize(offsets_part, part), output_scale)
    record = QdqLinear(quantized, input_scale, output_scale, 16, means_scale=means_scale)
    assert torch.allclose(record(x), expected, atol=1e-6)
    recording = QdqLinear(quantized, input_scale, None, 16, means_scale=means_scale)
    assert torch.allclose(recording.accumulate(x), codes_part + offsets_part, atol=1e-5)
    # The block means of Q(x) times O/B are Q(x) times the offsets spread over their blocks, up to the means' rounding.
    assert torch.allclose(
        recording.accumulate(x), q @ quantized.dequantize().T, atol=means_scale * float(quantized.offset_weight().abs().sum(1).max()) + 1e-5
    )  # ≤ s_m / 2 per mean, plus float32 summation
    assert (
        record.block_means_scale == means_scale and QdqLinear(quantized, input_scale, output_scale, 16).block_means_scale == input_scale
    )  # default: the input's grid


def test_an_int8_input_with_an_int16_output_keeps_the_int8_input_grid():
    torch.manual_seed(0)
    codes = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    weight = QuantizedWeight(codes, torch.full((8,), 0.01))
    x = torch.randn(4, 16)
    input_scale, output_clip = activation_scale(2.0, 8), 8.0  # no output saturates
    narrow = QdqLinear(weight, input_scale, activation_scale(output_clip, 8), 8)
    wide = QdqLinear(weight, input_scale, activation_scale(output_clip, 16), 8, output_bits=16)
    assert wide.out_bits == 16 and narrow.out_bits == 8 and QdqLinear(weight, input_scale, 0.1, 8, output_bits=8) == QdqLinear(weight, input_scale, 0.1, 8)
    exact = torch.nn.functional.linear(fake_quantize_activation(x, input_scale, 8), weight.dequantize())
    assert torch.equal(wide.accumulate(x), narrow.accumulate(x))  # the same int8 MACs
    assert torch.equal(wide(x), fake_quantize_activation(exact, wide.output_scale, 16))
    assert (wide(x) - exact).abs().max() < (narrow(x) - exact).abs().max()
    with pytest.raises(ValueError, match="at least as wide as the input"):
        QdqLinear(weight, activation_scale(2.0, 16), 0.1, 16, output_bits=8)

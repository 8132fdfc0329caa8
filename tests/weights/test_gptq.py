"""GPTQ rounding (weights/gptq.py) against round-to-nearest on the same grid."""

import torch
from quantkit.runtime.qdq import QuantizedWeight, weight_grid

from quantkit.quant_primitives import quantize_symmetric
from quantkit.weights.gptq import gptq_codes
from quantkit.weights.quantize import quantize_weight


def _correlated_inputs(tokens: int = 2048, features: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    scales = torch.linspace(0.2, 4.0, features)  # a few large input channels, as in LLMs
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scales


def _output_error(weight, dequantized, x):
    return float(((x @ weight.T - x @ dequantized.T) ** 2).mean())


def test_gptq_keeps_the_grid_and_lowers_the_output_error():
    x = _correlated_inputs()
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.1
    hessian = (x.T @ x).double()
    for block_size in (None, 32):
        gptq = quantize_weight(weight, bits=4, rule="mse", block_size=block_size, rounding="gptq", hessian=hessian)
        # Round to nearest on the same grid (the Hessian-weighted scales): only the codes differ.
        grid = weight_grid(gptq.scales, gptq.block_scales, block_size)
        nearest = QuantizedWeight(quantize_symmetric(weight, grid, 4).to(torch.int8), gptq.scales, 4, block_size, gptq.block_scales)
        assert (gptq.block_scales is None) == (block_size is None)
        assert int(gptq.codes.abs().max()) <= 7 and gptq.codes.dtype == torch.int8
        assert _output_error(weight, gptq.dequantize(), x) < 0.7 * _output_error(weight, nearest.dequantize(), x)
        # Per channel, the Hessian-weighted scales alone already lower the output error of plain
        # MSE scales. (LPBQ's searched grids s_j · k are many; on one small random weight either
        # choice may land lower: quant_primitives.lpbq_scales says what was measured on SmolLM2.)
        if block_size is None:
            plain = quantize_weight(weight, bits=4, rule="mse", block_size=block_size)
            assert _output_error(weight, nearest.dequantize(), x) < _output_error(weight, plain.dequantize(), x)


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    """With uncorrelated, equal inputs no error can be compensated: GPTQ rounds to nearest."""
    weight = torch.randn(16, 48, generator=torch.Generator().manual_seed(2))
    scales = weight.abs().amax(dim=1, keepdim=True) / 7
    codes = gptq_codes(weight, torch.eye(48, dtype=torch.float64), scales, 4, damping=0.0)
    assert torch.equal(codes, torch.clamp(torch.round(weight / scales), -7, 7).to(torch.int8))


def test_unseen_inputs_do_not_break_the_factorisation():
    x = _correlated_inputs(features=32)
    x[:, 3] = 0  # an input channel that never fires
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    codes = gptq_codes(weight, (x.T @ x).double(), weight.abs().amax(dim=1, keepdim=True) / 7, 4)
    assert codes.shape == weight.shape and torch.isfinite(codes.float()).all()


def test_gptq_rounds_the_rest_of_an_offset_weight_on_the_full_4_bit_range():
    """With block offsets the codes hold weight − offsets on [−8, 7]: GPTQ keeps that grid
    and lowers the output error of rounding it to nearest."""
    x = _correlated_inputs()
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(2)) * 0.1 + 0.03
    hessian = (x.T @ x).double()
    gptq = quantize_weight(weight, bits=4, rule="mse", block_size=32, rounding="gptq", hessian=hessian, offsets="int8")
    rest = weight - (gptq.offset_weight() / 32).repeat_interleave(32, dim=1)
    grid = weight_grid(gptq.scales, gptq.block_scales, 32)
    nearest = QuantizedWeight(
        quantize_symmetric(rest, grid, 4, full_range=True).to(torch.int8), gptq.scales, 4, 32, gptq.block_scales, gptq.offset_codes, gptq.offset_scales
    )
    assert -8 <= int(gptq.codes.min()) and int(gptq.codes.max()) <= 7
    assert _output_error(weight, gptq.dequantize(), x) < 0.7 * _output_error(weight, nearest.dequantize(), x)

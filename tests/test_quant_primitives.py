import math

import pytest
import torch

from quantkit.quant_primitives import (
    dequantize_symmetric,
    fake_quantize_symmetric,
    quantize_symmetric,
    quantize_weight_per_channel,
    sqnr_db,
    symmetric_scale,
    weight_scales_per_channel,
)


def test_symmetric_scale_maps_absmax_to_largest_code():
    scale = symmetric_scale(torch.tensor(2.54))
    assert torch.isclose(scale, torch.tensor(0.02))
    assert quantize_symmetric(torch.tensor([2.54, -2.54]), scale).tolist() == [127, -127]


def test_quantize_clamps_and_rounds_like_a_plain_reference():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3
    scale = torch.tensor(0.01)
    reference = [max(-127, min(127, round(v / 0.01))) for v in x.tolist()]
    # Python's round() is banker's rounding, as is torch.round: the two agree exactly.
    assert quantize_symmetric(x, scale).tolist() == reference


def test_per_channel_axis_uses_each_channels_scale():
    weight = torch.tensor([[1.0, -0.5], [10.0, 5.0]])
    scale = symmetric_scale(weight.abs().amax(dim=1))
    q = quantize_symmetric(weight, scale, axis=0)
    assert q.tolist() == [[127, -64], [127, 64]]
    assert torch.allclose(dequantize_symmetric(q, scale, axis=0), weight, atol=scale.max().item() / 2)


def test_fake_quant_error_is_at_most_half_a_step_inside_the_range():
    torch.manual_seed(1)
    x = torch.randn(4096)
    scale = symmetric_scale(x.abs().max())
    assert (fake_quantize_symmetric(x, scale) - x).abs().max() <= scale / 2 + 1e-7


def test_zero_tensor_gets_a_usable_scale():
    scale = symmetric_scale(torch.tensor(0.0))
    assert scale > 0
    assert fake_quantize_symmetric(torch.zeros(3), scale).tolist() == [0.0, 0.0, 0.0]


def test_sqnr_matches_definition():
    reference = torch.tensor([3.0, 4.0])
    approximation = torch.tensor([3.0, 3.0])
    assert sqnr_db(reference, approximation) == pytest.approx(10 * math.log10(25 / 1))
    assert sqnr_db(reference, reference) == float("inf")


def test_weight_scale_rules():
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    weight[3, 7] = 12.0  # one row with a lone large weight: clipping it pays off
    max_scales = weight_scales_per_channel(weight, rule="max")
    assert torch.allclose(max_scales, weight.abs().amax(dim=1) / 127)
    mse_scales = weight_scales_per_channel(weight, rule="mse")
    assert (mse_scales <= max_scales).all() and (mse_scales >= 0.75 * max_scales - 1e-9).all()

    def row_errors(scales):
        return (fake_quantize_symmetric(weight, scales, 8, axis=0) - weight).pow(2).sum(dim=1)

    assert (row_errors(mse_scales) <= row_errors(max_scales) + 1e-9).all()
    assert row_errors(mse_scales).sum() < row_errors(max_scales).sum()
    fake, scales = quantize_weight_per_channel(weight, rule="mse")
    assert torch.equal(scales, mse_scales) and torch.equal(fake, fake_quantize_symmetric(weight, mse_scales, 8, axis=0))
    with pytest.raises(ValueError, match="expected one of"):
        weight_scales_per_channel(weight, rule="percentile")


@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_rounding_errors_equal_the_fake_quantization_they_stand_for(full_range, weighted):
    """The scale searches' in-place error is bit for bit Σ (fq(x) − x)² · weighting."""
    from quantkit.quant_primitives import _rounding_errors

    torch.manual_seed(3)
    blocks = torch.randn(12, 5, 32) * 0.02
    scales = torch.rand(12)[:, None, None] * 0.01 + 1e-4
    weighting = torch.rand(12, 5, 32) if weighted else None
    expected = ((fake_quantize_symmetric(blocks, scales, 4, full_range=full_range) - blocks).pow(2) * (1.0 if weighting is None else weighting)).sum(dim=-1)
    assert torch.equal(_rounding_errors(blocks, scales, 4, full_range, weighting), expected)

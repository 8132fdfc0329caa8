import pytest
import torch

from quantkit.baselines.smoothquant import SmoothQuantLinear, smoothing_factors, smoothquant_simulation
from quantkit.calibration.collect import collect_activation_statistics
from quantkit.models.architecture import find_decoder_layout
from quantkit.quant_primitives import sqnr_db
from tests.conftest import TINY_VOCAB, tiny_model


def test_smoothing_factors_follow_eq4():
    activation_absmax = torch.tensor([4.0, 1.0, 9.0])
    weights = [torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]), torch.tensor([[2.0, 0.5, 0.1]])]
    factors = smoothing_factors(activation_absmax, weights, alpha=0.5)
    weight_absmax = torch.tensor([2.0, 2.0, 1.0])
    assert torch.allclose(factors, activation_absmax.sqrt() / weight_absmax.sqrt())


def test_smoothing_is_an_identity_before_quantization():
    torch.manual_seed(0)
    x, weight = torch.randn(16, 8), torch.randn(4, 8)
    factors = smoothing_factors(x.abs().amax(dim=0), [weight], alpha=0.7)
    assert torch.allclose((x / factors) @ (weight * factors).T, x @ weight.T, atol=1e-5)


def test_smoothing_helps_static_int8_on_outlier_channels():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(256, 64)
    x[:, [3, 40]] *= 50.0
    reference = linear(x)
    absmax = x.abs().amax(dim=0)
    sqnr = {}
    for alpha in (0.0, 0.5):
        factors = smoothing_factors(absmax, [linear.weight], alpha) if alpha else torch.ones(64)
        layer = SmoothQuantLinear(linear, factors, float((absmax / factors).max()))
        sqnr[alpha] = sqnr_db(reference, layer(x))
    assert sqnr[0.5] > sqnr[0.0] + 6  # at least 4x less noise power


def test_bad_alpha_is_rejected():
    with pytest.raises(ValueError, match="alpha: got 1.5"):
        smoothing_factors(torch.ones(2), [torch.ones(2, 2)], 1.5)


def test_simulation_swaps_every_linear_and_restores_them():
    model = tiny_model("qwen2", planted_outliers=True)
    layout = find_decoder_layout(model)
    sequences = torch.randint(0, TINY_VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    statistics = collect_activation_statistics(layout, sequences, progress=False)
    with smoothquant_simulation(layout, statistics, alpha=0.5):
        assert all(isinstance(layout.linear(n), SmoothQuantLinear) for n in layout.linear_names())
        model(input_ids=sequences)
    assert all(isinstance(layout.linear(n), torch.nn.Linear) for n in layout.linear_names())

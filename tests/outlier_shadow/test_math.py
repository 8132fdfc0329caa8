import pytest
import torch

from quantkit.outlier_shadow.math import (
    hot_channel_set,
    layer_importance,
    mse_clip_threshold,
    paper_clip_threshold,
    pruned_layers,
)
from quantkit.quant_primitives import quantize_weight_per_channel
from quantkit.quantiles import log_histogram


def test_paper_rule_uses_max_when_close_and_percentile_otherwise():
    assert paper_clip_threshold(absmax=3.0, percentile_value=2.0, k=2.0) == 3.0
    assert paper_clip_threshold(absmax=30.0, percentile_value=2.0, k=2.0) == 2.0


def test_hot_set_is_the_smallest_set_reaching_coverage():
    counts = torch.tensor([0, 50, 5, 30, 10, 5])
    assert hot_channel_set(counts, 0.8).tolist() == [1, 3]  # 80 of 100
    assert hot_channel_set(counts, 0.81).tolist() == [1, 3, 4]
    assert hot_channel_set(counts, 1.0).tolist() == [1, 2, 3, 4, 5]
    assert hot_channel_set(torch.zeros(4, dtype=torch.long), 0.8).tolist() == []


def test_hot_set_coverage_property_on_random_counts():
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        counts = torch.randint(0, 100, (40,), generator=generator) * (torch.rand(40, generator=generator) < 0.3)
        if counts.sum() == 0:
            continue
        hot = hot_channel_set(counts, 0.8)
        assert counts[hot].sum() >= 0.8 * counts.sum()
        # no smaller set does it: dropping the smallest member falls short
        smaller = hot[torch.argsort(counts[hot], descending=True)][:-1]
        assert counts[smaller].sum() < 0.8 * counts.sum()


def test_importance_and_pruning_order():
    assert layer_importance(absmax=10.0, scale=0.1) == 100.0
    importance = {"a": 127.0, "b": 5000.0, "c": 300.0, "d": 127.0, "e": 20000.0}
    assert pruned_layers(importance, 0.6) == {"a", "d", "c"}
    assert pruned_layers(importance, 0.0) == set()
    assert pruned_layers(importance, 1.0) == set(importance)


def test_mse_clip_balances_rounding_and_clipping():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[:5] = 80.0  # five huge values
    histogram, absmax = log_histogram(x), float(x.abs().max())
    unshadowed = mse_clip_threshold(histogram, absmax, shadowed=False)
    assert 4.0 < unshadowed < absmax  # clips the five, keeps resolution for the rest
    shadowed = mse_clip_threshold(histogram, absmax, shadowed=True, max_outlier_fraction=1e-3)
    assert shadowed == pytest.approx(torch.quantile(x.abs(), 0.999).item(), rel=0.05)  # as low as the outlier budget allows


def test_per_channel_weight_quantization_error_bound():
    torch.manual_seed(0)
    weight = torch.randn(8, 64) * torch.logspace(-2, 1, 8).unsqueeze(1)
    dequantized, scales = quantize_weight_per_channel(weight)
    assert ((dequantized - weight).abs() <= scales.unsqueeze(1) / 2 + 1e-7).all()


def test_output_outlier_channels_take_only_the_few_that_dwarf_the_rest():
    from quantkit.outlier_shadow.math import output_outlier_channels

    absmax = torch.full((64,), 2.0)
    absmax[[7, 30]] = torch.tensor([60.0, 30.0])  # massive channels (SmolLM2 block 11's shape)
    absmax[[1, 2, 3]] = torch.tensor([9.0, 8.0, 7.0])
    assert output_outlier_channels(absmax, max_channels=4, ratio=2.0) == [7, 30]  # the 5th largest is 7: bound 14
    assert output_outlier_channels(absmax, max_channels=0, ratio=2.0) == []  # disabled
    assert output_outlier_channels(torch.full((64,), 3.0), max_channels=4, ratio=2.0) == []  # flat: none
    assert output_outlier_channels(absmax, max_channels=1, ratio=2.0) == []  # 60 is not 2 × 30
    assert output_outlier_channels(absmax[:3], max_channels=4, ratio=2.0) == []  # fewer channels than the cap

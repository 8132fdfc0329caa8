import pytest
import torch
from quantkit.eval.perplexity import perplexity

from quantkit.calibration.collect import collect_activation_statistics
from quantkit.models.architecture import find_decoder_layout
from quantkit.outlier_shadow import ShadowConfig, ShadowPlan, build_shadow_plan, simulated_quantization
from quantkit.outlier_shadow.simulated_linear import DeployedLinear
from quantkit.precision import calibrated_precision
from tests.conftest import PLANTED_CHANNELS, TINY_VOCAB, tiny_model


@pytest.fixture(scope="module")
def planted():
    model = tiny_model("llama", planted_outliers=True)
    layout = find_decoder_layout(model)
    sequences = torch.randint(0, TINY_VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    statistics = collect_activation_statistics(layout, sequences, outlier_quantile=0.99, progress=False)
    return layout, statistics, sequences


def test_plan_finds_the_planted_outliers(planted):
    layout, statistics, _ = planted
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, prune_fraction=0.0))
    site = plan.sites["model.layers.0.mlp.gate_proj"]
    assert site.linear_names == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert site.shadowed and set(site.hot_channels_) <= set(PLANTED_CHANNELS)
    assert set(site.hot_channels_) <= set(site.outlier_channels_)
    counts = statistics["model.layers.0.mlp.gate_proj:input"].channel_outlier_count
    assert counts[site.hot_channels_].sum() >= plan.hot_coverage_ * counts.sum()


def test_pruning_drops_the_least_important_layers(planted):
    layout, statistics, _ = planted
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, prune_fraction=0.5))
    sites = list(plan.sites.values())
    pruned = [s for s in sites if s.pruned]
    kept = [s for s in sites if not s.pruned]
    assert len(pruned) == len(sites) // 2
    assert max(s.importance_ for s in pruned) <= min(s.importance_ for s in kept)
    assert all(not s.outlier_channels_ and not s.hot_channels_ for s in pruned)


def test_shadow_recovers_accuracy_on_planted_outliers(planted):
    layout, statistics, sequences = planted
    fp = perplexity(lambda ids: layout.model(input_ids=ids, use_cache=False).logits, sequences, progress=False)
    error = {}
    for name, config in {
        "shadow": ShadowConfig(percentile=0.99, prune_fraction=0.0),
        "clipped": ShadowConfig(percentile=0.99, prune_fraction=1.0, pruned_scale_rule="clip"),
    }.items():
        plan = build_shadow_plan(statistics, layout, config)
        with simulated_quantization(layout, plan, calibrated_precision(layout, plan, sequences[:2], "16")):
            error[name] = abs(perplexity(lambda ids: layout.model(input_ids=ids, use_cache=False).logits, sequences, progress=False) - fp)
    assert error["shadow"] < error["clipped"] / 3


def test_simulation_restores_fp_linears(planted):
    layout, statistics, _ = planted
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99))
    before = [layout.linear(n) for n in layout.linear_names()]
    with simulated_quantization(layout, plan, calibrated_precision(layout, plan, planted[2][:1]), blocks={1}):
        assert isinstance(layout.linear("model.layers.1.mlp.down_proj"), DeployedLinear)
        assert isinstance(layout.linear("model.layers.0.mlp.down_proj"), torch.nn.Linear)
    assert [layout.linear(n) for n in layout.linear_names()] == before


def test_plan_round_trips_and_measures_resident_weights(planted, tmp_path):
    layout, statistics, _ = planted
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, prune_fraction=0.0))
    plan.save(tmp_path / "plan.json")
    assert ShadowPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    assert plan.config.weight_scale_rule == "mse"
    older = plan.to_dict()
    del older["config"]["weight_scale_rule"]  # a plan written before the setting existed …
    assert ShadowPlan.from_dict(older).config.weight_scale_rule == "max"  # … was calibrated with min/max weights
    out_features = {n: layout.linear(n).out_features for n in layout.linear_names()}
    resident, cold = plan.resident_shadow_weights(layout), plan.cold_shadow_columns(layout)
    assert plan.resident_shadow_parameters(out_features) == sum(w.numel() for k, w in resident.items() if k.endswith(".hot"))
    assert plan.cold_shadow_parameters(out_features) == sum(w.make().numel() for w in cold.values())
    for name, columns in cold.items():  # channel-major cold columns, as announced
        site = plan.site_of(name.removesuffix(".cold"))
        made = columns.make()
        assert made.shape == columns.shape and torch.equal(made, layout.linear(name.removesuffix(".cold")).weight[:, site.cold_channels_].T)


def test_mismatched_percentile_is_refused(planted):
    layout, statistics, _ = planted
    with pytest.raises(ValueError, match="recalibrate with --outlier-quantile 0.999"):
        build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.999))


def test_resident_cap_lowers_coverage_until_the_hot_columns_fit(planted):
    layout, statistics, _ = planted
    out_features = {n: layout.linear(n).out_features for n in layout.linear_names()}
    parameters = sum(p.numel() for p in layout.model.parameters())
    uncapped = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, prune_fraction=0.0, hot_coverage=0.9, max_resident_fraction=1.0))
    assert uncapped.hot_coverage_ == 0.9
    full = uncapped.resident_shadow_parameters(out_features)
    cap = 0.5 * full / parameters
    capped = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, prune_fraction=0.0, hot_coverage=0.9, max_resident_fraction=cap))
    assert capped.resident_shadow_parameters(out_features) <= cap * parameters
    assert 0 < capped.hot_coverage_ < 0.9
    for name, site in capped.sites.items():  # each hot set still covers the (lowered) share
        if not site.shadowed:
            continue
        counts = statistics[f"{name}:input"].channel_outlier_count
        assert counts[site.hot_channels_].sum() >= capped.hot_coverage_ * counts.sum() - 1e-9


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_output_channels", -1, "max_output_channels: got -1, expected an integer ≥ 0"),
        ("output_outlier_ratio", 0.5, "output_outlier_ratio: got 0.5, expected ≥ 1"),
        ("weight_scale_rule", "minmax", "weight_scale_rule: got 'minmax'"),
    ],
)
def test_shadow_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ShadowConfig(**{field: value})


def test_output_channels_are_chosen_and_disabled_by_the_settings(planted):
    from quantkit.precision import calibrated_precision

    layout, statistics, sequences = planted
    with torch.no_grad():  # plant two massive output channels in block 1's up_proj
        layout.linear("model.layers.1.mlp.up_proj").weight[[4, 11]] *= 30
    try:
        plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99))
        calibrated_precision(layout, plan, sequences[:2], "8")
        assert plan.sites["model.layers.1.mlp.gate_proj"].output_channels_["model.layers.1.mlp.up_proj"] == [4, 11]
        off = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99, max_output_channels=0))
        calibrated_precision(layout, off, sequences[:2], "8")
        assert all(not site.output_channels_ for site in off.sites.values())
    finally:
        with torch.no_grad():
            layout.linear("model.layers.1.mlp.up_proj").weight[[4, 11]] /= 30

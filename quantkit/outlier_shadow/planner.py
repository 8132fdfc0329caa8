"""Build the shadow plan from calibration statistics (orchestration over ``math.py``)."""

from __future__ import annotations

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.config import ShadowConfig
from quantkit.outlier_shadow.math import hot_channel_set, layer_importance, mse_clip_threshold, paper_clip_threshold, pruned_layers
from quantkit.outlier_shadow.plan import ShadowPlan, SiteShadowPlan
from quantkit.statistics import ActivationStatistics

__all__ = ["build_shadow_plan"]


def build_shadow_plan(statistics: ActivationStatistics, layout: DecoderLayout, config: ShadowConfig | None = None) -> ShadowPlan:
    """Per Linear input: clip threshold, importance, pruning, outlier and hot channels.

    Outlier channels are counted beyond the statistics' own clip (``outlier_threshold``,
    the calibration ``outlier_quantile``); ``config.percentile`` must match it.
    """
    config = config or ShadowConfig()
    sites: dict[str, SiteShadowPlan] = {}
    for site in layout.input_sites():
        stats = statistics[f"{site.name}:input"]
        absmax = float(stats.absmax)
        calibration_clip = float(stats.outlier_threshold)
        percentile_value = stats.quantile(config.percentile)
        if abs(percentile_value - calibration_clip) > 1e-6 * max(1.0, calibration_clip):
            raise ValueError(
                f"shadow percentile {config.percentile} does not match the calibration's outlier_quantile "
                f"(clip {calibration_clip:g} vs {percentile_value:g} for {site.name}); recalibrate with --outlier-quantile {config.percentile}"
            )
        if config.scale_rule == "paper":
            threshold = paper_clip_threshold(absmax, percentile_value, config.k)
        else:
            threshold = mse_clip_threshold(stats.histogram, absmax, shadowed=True, max_outlier_fraction=1.0 - config.percentile)
        outliers = [int(c) for c in (stats.channel_outlier_count > 0).nonzero().flatten()] if threshold < absmax else []
        sites[site.name] = SiteShadowPlan(
            linear_names=list(site.linear_names),
            block_index=site.block_index,
            num_channels=site.num_channels,
            absmax_=absmax,
            threshold_=threshold,
            importance_=layer_importance(absmax, threshold / 127),
            pruned=False,
            outlier_channels_=outliers,
            hot_channels_=[],
        )
    for name in pruned_layers({name: site.importance_ for name, site in sites.items()}, config.prune_fraction):
        site = sites[name]
        site.pruned = True
        if config.pruned_scale_rule == "max":
            site.threshold_ = site.absmax_
        elif config.pruned_scale_rule == "mse":
            stats = statistics[f"{name}:input"]
            site.threshold_ = mse_clip_threshold(stats.histogram, site.absmax_, shadowed=False)
        site.outlier_channels_, site.hot_channels_ = [], []
    plan = ShadowPlan(config=config, sites=sites)
    _choose_hot_channels(plan, statistics, layout)
    return plan


def _choose_hot_channels(plan: ShadowPlan, statistics: ActivationStatistics, layout: DecoderLayout) -> None:
    """Hot sets at ``hot_coverage``, or at the highest coverage whose resident columns fit
    ``max_resident_fraction`` of the model's parameters (bisection on the coverage)."""
    config = plan.config
    counts = {name: statistics[f"{name}:input"].channel_outlier_count for name, site in plan.sites.items() if site.shadowed}
    out_features = {name: layout.linear(name).out_features for name in layout.linear_names()}
    budget = config.max_resident_fraction * sum(p.numel() for p in layout.model.parameters())

    def assign(coverage: float) -> int:
        for name, site in plan.sites.items():
            site.hot_channels_ = [int(c) for c in hot_channel_set(counts[name], coverage)] if name in counts else []
        return plan.resident_shadow_parameters(out_features)

    coverage = config.hot_coverage
    if assign(coverage) > budget:
        low, high = 0.0, coverage
        for _ in range(30):  # coverage to ~1e-9; resident size is monotone in it
            middle = (low + high) / 2
            low, high = (middle, high) if assign(middle) <= budget else (low, middle)
        coverage = low
        assign(coverage)
    plan.hot_coverage_ = coverage

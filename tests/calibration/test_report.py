"""The calibration summary text: which figure is the bundle's, and a bundle over budget is said."""

from quantkit.calibration.report import format_summary
from quantkit.sensitivity.placement import PlacementPlan


def _summary(shipped: float) -> str:
    placement = PlacementPlan(placement=["npu", "npu"], budget_relative_ppl=0.01, fp_ppl_=20.0, ppl_=20.1)
    perplexities = {"fp": 20.0, "quantkit": shipped, "quantkit_simulated": 20.1}
    return format_summary("tiny", perplexities, [], 0.999, {"total": 1.0}, 100.0, placement, bundle_chunk_size=64)


def test_summary_names_the_bundle_figure_and_its_chunk_size():
    text = _summary(20.15)
    assert "quantkit = the exported bundle (chunk 64) through the runtime" in text
    assert "within the +1% budget" in text and "over the budget" not in text


def test_summary_says_when_the_bundle_misses_the_budget_the_simulation_met():
    text = _summary(20.3)  # +1.5%: the twin's draw met the +1% budget, the bundle's did not
    assert "the bundle itself measured +1.50%, over the budget the simulation met" in text

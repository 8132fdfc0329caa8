"""Per-graph activation precision under an accuracy budget: INT8 wherever it holds,
16-bit only where it must (``--activation-bits auto``).

Start with every NPU graph at A8; measure, for each graph alone at A8 (the rest of the
model in FP), the KL divergence of the output distribution from FP's; promote to A16
the graphs that buy the most accuracy per NPU MAC (KL / MACs, largest first) until the
deployed arithmetic's validation perplexity is within the budget. The count promoted is
found by bisection on measured perplexities. What the search measured is kept for the
report's Pareto curve (A8 MAC share against perplexity).
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.outlier_shadow.simulated_linear import WeightCodes, simulated_quantization
from quantkit.precision.plan import PrecisionPlan
from quantkit.sensitivity.measure import fp_reference, nll_and_kl

__all__ = ["graph_sensitivity", "promotion_order", "search_activation_bits"]


@torch.no_grad()
def graph_sensitivity(layout: DecoderLayout, plan: ShadowPlan, precision: PrecisionPlan, sequences: torch.Tensor, weights: WeightCodes, progress: bool = True) -> dict[str, float]:
    """KL(P_fp ‖ P) per token with only that graph quantized at A8, by graph site name
    (each run starts at the graph's block: the blocks before it are FP)."""
    _, fp_log_probs, block_inputs = fp_reference(layout, sequences)
    at_a8 = precision.with_uniform_bits(8)
    sensitivity = {}
    for name, graph in tqdm(precision.graphs.items(), desc="graph sensitivity (A8)", unit="graph", disable=not progress):
        single = ShadowPlan(config=plan.config, sites={name: plan.sites[name]}, hot_coverage_=plan.hot_coverage_)
        with simulated_quantization(layout, single, at_a8, weights=weights):
            _, kl, _ = nll_and_kl(layout, sequences, fp_log_probs, 1, graph.block_index, block_inputs)
        sensitivity[name] = max(kl, 0.0)
    return sensitivity


def promotion_order(precision: PrecisionPlan, sensitivity: dict[str, float]) -> list[str]:
    """Graphs in the order they are promoted to A16: most KL per MAC first."""
    return sorted(precision.graphs, key=lambda name: (-sensitivity[name] / precision.graphs[name].macs_per_token, name))


def search_activation_bits(precision: PrecisionPlan, sensitivity: dict[str, float], evaluate: Callable[[PrecisionPlan], float], fp_ppl: float, budget_relative_ppl: float) -> float:
    """Set ``precision``'s bits in place: the fewest graphs promoted to A16, in
    :func:`promotion_order`, whose measured ``evaluate(precision)`` is within
    fp_ppl × (1 + budget). Returns that perplexity; when even all-A16 is over budget,
    every graph stays A16 (block placement on the CPU is the last resort)."""
    order = promotion_order(precision, sensitivity)
    limit = fp_ppl * (1 + budget_relative_ppl)
    measured: dict[int, float] = {}

    def apply(count: int) -> None:
        promoted = set(order[:count])
        for name, graph in precision.graphs.items():
            graph.activation_bits = 16 if name in promoted else 8

    def measure(count: int) -> float:
        if count not in measured:
            apply(count)
            measured[count] = evaluate(precision)
            precision.search_.append({"promoted": count, "a8_mac_share": precision.a8_mac_share(), "ppl": measured[count]})
        return measured[count]

    low, high = 0, len(order)
    if measure(low) <= limit:
        high = low
    elif measure(high) <= limit:
        while high - low > 1:  # invariant: measure(low) > limit ≥ measure(high)
            middle = (low + high) // 2
            low, high = (low, middle) if measure(middle) <= limit else (middle, high)
    apply(high)
    precision.sensitivity_ = {precision.graphs[name].name: value for name, value in sensitivity.items()}
    precision.search_.sort(key=lambda point: point["promoted"])
    return measure(high)

"""Per-graph precision under an accuracy budget: INT8 activations wherever they hold,
16-bit only where they must (``--activation-bits auto``); 4-bit weights wherever they
hold, INT8 only where they must (``--weight-bits auto``).

Start with every NPU graph at A8 and measure it; a point is held against the budget by
the upper confidence bound of its perplexity over the validation windows
(``sensitivity.realizations.relative_ppl_interval``), so that the decision holds on other
text, not only on this one. When every graph at A8 is within it, that is the plan. Else
measure, for each graph alone at A8 (the rest of the model in FP) — in the blocks that
hold most of the loss (:func:`sensitive_block_graphs`; the caller measures the blocks) —
the KL divergence of the output distribution from FP's, and promote to A16 the graphs that buy the most
accuracy per NPU MAC (KL / MACs, largest first) until the bound is within the budget. The
count promoted is predicted from the KLs (:func:`predicted_promotions`), then found on
measured points: doubled while over, the prediction's neighbour, bisection. What the search measured is kept for the
report's Pareto curve (A8 MAC share against perplexity).

The weight search is the same with W4 in place of A8 (on the A16 graphs, the only ones
the HTP runs with 4-bit weights): each graph's KL with only it at W4, graphs promoted back
to INT8 weights in order of KL per weight byte (∝ MACs), the count found by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.outlier_shadow.simulated_linear import WeightCodes, simulated_quantization
from quantkit.precision.plan import PrecisionPlan
from quantkit.sensitivity.measure import FpReference, fp_reference, nll_and_kl

__all__ = ["graph_sensitivity", "predicted_promotions", "promotion_order", "sensitive_block_graphs", "search_activation_bits", "search_weight_bits"]


@torch.no_grad()
def graph_sensitivity(
    layout: DecoderLayout,
    plan: ShadowPlan,
    precision: PrecisionPlan,
    sequences: torch.Tensor,
    weights: WeightCodes,
    progress: bool = True,
    graphs: list[str] | None = None,
    label: str = "A8",
    reference: FpReference | None = None,
) -> dict[str, float]:
    """KL(P_fp ‖ P) per token with only that graph quantized, by graph site name (each run
    starts at the graph's block: the blocks before it are FP). ``label`` "A8": at A8 (the
    activation search); otherwise as ``precision`` and ``weights`` have it (e.g. "W4").
    ``graphs``: the site names to measure (default all). ``reference``: the FP run over
    ``sequences`` when the caller has it (``fp_reference``; computed here otherwise)."""
    reference = reference or fp_reference(layout, sequences)
    measured = precision.with_uniform_bits(8) if label == "A8" else precision
    sensitivity = {}
    names = list(precision.graphs) if graphs is None else graphs
    for name in tqdm(names, desc=f"graph sensitivity ({label})", unit="graph", disable=not progress):
        graph = precision.graphs[name]
        single = ShadowPlan(config=plan.config, sites={name: plan.sites[name]}, hot_coverage_=plan.hot_coverage_)
        with simulated_quantization(layout, single, measured, weights=weights):
            _, kl, _ = nll_and_kl(layout, sequences, reference, 1, graph.block_index)
        sensitivity[name] = max(kl, 0.0)
    return sensitivity


def sensitive_block_graphs(precision: PrecisionPlan, block_kl: dict[int, float], coverage: float = 0.75, max_share: float = 0.125) -> list[str]:
    """The graphs of the fewest blocks whose KL (each block alone at A8: ``block_kl``)
    adds up to ``coverage`` of all blocks' — at most ``max_share`` of the blocks, at least
    one: where per-graph sensitivity is worth a model run per graph (measuring every graph
    of every block costs four times the runs of measuring the blocks). On SmolLM2 the
    graphs the search promotes lie in the two blocks of 30 with the most A8 KL (the last
    block's MLP, the first block's down_proj), while the rest of the KL is spread thinly;
    the unmeasured graphs stay reachable, promoted after the measured ones."""
    ranked = sorted(block_kl, key=lambda block: (-block_kl[block], block))
    total, covered, chosen = sum(max(kl, 0.0) for kl in block_kl.values()), 0.0, []
    for block in ranked[: max(1, int(max_share * len(ranked)))]:
        chosen.append(block)
        covered += max(block_kl[block], 0.0)
        if covered >= coverage * total:
            break
    return [name for name, graph in precision.graphs.items() if graph.block_index in chosen]


def promotion_order(precision: PrecisionPlan, sensitivity: dict[str, float]) -> list[str]:
    """The graphs ``sensitivity`` measured, in the order they are promoted (to A16, or back
    to INT8 weights): most KL per MAC first."""
    return sorted(sensitivity, key=lambda name: (-sensitivity[name] / precision.graphs[name].macs_per_token, name))


Point = dict  # a measured point: "ppl" (the estimate), optionally "ppl_upper" (what is decided on) and more


def _decided_value(point: Point) -> float:
    """What a point is held against the budget by: its upper confidence bound where it has one."""
    return point.get("ppl_upper", point["ppl"])


def _promote_within_budget(
    count: int,
    apply: Callable[[int], None],
    evaluate: Callable[[], Point],
    describe: Callable[[], dict],
    points: list[dict],
    limit: float,
    measured: dict[int, Point] | None = None,
    start: int | None = None,
) -> Point:
    """Apply the smallest n in 0…count whose measured ``evaluate()`` after ``apply(n)`` is
    ≤ ``limit`` (:func:`_decided_value`; taken to fall with n; ``count`` when even that is
    over), and return its point. ``start``: a predicted n, measured first; doubled while
    over, then n − 1 is tried, then bisection — a good prediction costs three points where
    bisection over ``count`` costs log2(count) + 2. Every measured point goes into
    ``points`` (sorted by n) with ``describe()``'s fields; ``measured``: points already
    measured (n → point, in ``points`` too)."""
    measured = dict(measured or {})

    def measure(n: int) -> float:
        if n not in measured:
            apply(n)
            measured[n] = {"promoted": n, **describe(), **evaluate()}
            points.append(measured[n])
        return _decided_value(measured[n])

    low, high = 0, 0
    if measure(0) > limit:
        high = min(max(start or count, 1), count)
        while measure(high) > limit and high < count:  # gallop up from the prediction
            low, high = high, min(count, 2 * high)
        if measure(high) <= limit:
            if high - 1 > low:  # the prediction's neighbour: over means the prediction was the smallest
                low, high = (low, high - 1) if measure(high - 1) <= limit else (high - 1, high)
            while high - low > 1:  # invariant: measure(low) > limit ≥ measure(high)
                middle = (low + high) // 2
                low, high = (low, middle) if measure(middle) <= limit else (middle, high)
    apply(high)
    points.sort(key=lambda point: point["promoted"])
    measure(high)
    return measured[high]


def predicted_promotions(order: list[str], sensitivity: dict[str, float], every_graph_a8: Point, fp_ppl: float, limit: float) -> int:
    """How many graphs of ``order`` to promote, taking their KL as additive shares of the
    all-A8 point's excess NLL: the fewest whose share brings the upper bound (the estimate
    plus the all-A8 point's margin) to ``limit``. Isolated KLs add up to less than the
    joint loss, so this tends to be low; the search gallops up from it."""
    excess = math.log(every_graph_a8["ppl"] / fp_ppl)
    margin = math.log(_decided_value(every_graph_a8) / every_graph_a8["ppl"])
    allowed = math.log(limit / fp_ppl) - margin
    total = sum(sensitivity.get(name, 0.0) for name in order)  # a graph not measured adds nothing
    if allowed <= 0 or excess <= 0 or total <= 0:
        return len(order)
    needed, covered = (1 - allowed / excess) * total, 0.0
    for count, name in enumerate(order, 1):
        covered += sensitivity.get(name, 0.0)
        if covered >= needed:
            return count
    return len(order)


def search_activation_bits(
    precision: PrecisionPlan, sensitivity: Callable[[], dict[str, float]], evaluate: Callable[[PrecisionPlan], Point], fp_ppl: float, budget_relative_ppl: float
) -> Point:
    """Set ``precision``'s bits in place: every graph at A8 when that point is within
    fp_ppl × (1 + budget) by :func:`_decided_value` (its upper confidence bound where
    ``evaluate`` gives one); otherwise the fewest graphs promoted to A16, in
    :func:`promotion_order` of ``sensitivity()`` (measured only then: it costs a model run
    per graph), that are. Returns the chosen point; when even all-A16 is over budget,
    every graph stays A16 (block placement on the CPU is the last resort)."""
    order: list[str] = []

    def apply(count: int) -> None:
        promoted = set(order[:count])
        for name, graph in precision.graphs.items():
            graph.activation_bits = 16 if name in promoted else 8

    describe = lambda: {"a8_mac_share": precision.a8_mac_share()}  # noqa: E731
    limit = fp_ppl * (1 + budget_relative_ppl)
    apply(0)
    every_graph_a8 = {"promoted": 0, **describe(), **evaluate(precision)}
    precision.search_.append(every_graph_a8)
    if _decided_value(every_graph_a8) <= limit:
        return every_graph_a8
    scores = sensitivity()
    order += promotion_order(precision, scores)
    order += [name for name in precision.graphs if name not in scores]  # not measured: promoted last, so all-A16 stays reachable
    precision.sensitivity_ = {precision.graphs[name].name: value for name, value in scores.items()}
    start = predicted_promotions(order, scores, every_graph_a8, fp_ppl, limit)
    return _promote_within_budget(len(order), apply, lambda: evaluate(precision), describe, precision.search_, limit, measured={0: every_graph_a8}, start=start)


def search_weight_bits(
    precision: PrecisionPlan,
    sensitivity: dict[str, float],
    int8_clips: dict[str, dict[str, dict[str, float]]],
    evaluate: Callable[[PrecisionPlan], float],
    fp_ppl: float,
    budget_relative_ppl: float,
) -> float:
    """Set ``precision``'s weight bits in place: of the 4-bit graphs in ``sensitivity``,
    the fewest promoted back to INT8 weights (most KL per MAC first) whose measured
    ``evaluate(precision)`` is within budget; a promoted graph gets back its INT8 output
    clips (``int8_clips``: site → its ``output_clips_`` recorded with INT8 weights).
    ``evaluate`` must pick each Linear's weights by its graph's ``weight_bits``."""
    order = promotion_order(precision, sensitivity)
    four = {
        name: (precision.graphs[name].weight_block_size, precision.graphs[name].weight_block_offsets, precision.graphs[name].output_clips_) for name in order
    }

    def apply(count: int) -> None:
        promoted = set(order[:count])
        for name in order:
            graph = precision.graphs[name]
            if name in promoted:
                graph.weight_bits, graph.weight_block_size, graph.weight_block_offsets, graph.output_clips_ = 8, None, "none", int8_clips[name]
            else:
                graph.weight_bits, (graph.weight_block_size, graph.weight_block_offsets, graph.output_clips_) = 4, four[name]

    precision.weight_sensitivity_ = {precision.graphs[name].name: value for name, value in sensitivity.items()}
    describe = lambda: {"w4_mac_share": precision.w4_mac_share()}  # noqa: E731
    return _promote_within_budget(
        len(order), apply, lambda: {"ppl": evaluate(precision)}, describe, precision.weight_search_, fp_ppl * (1 + budget_relative_ppl)
    )["ppl"]

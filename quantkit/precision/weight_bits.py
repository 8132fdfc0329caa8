"""4-bit weights for the 16-bit NPU graphs of a precision plan (``--weight-bits 4``).

The HTP runs 4-bit weights only with 16-bit activations (probed on onnxruntime-qnn 2.7:
an INT4 weight with INT8 activations, per channel or LPBQ, is refused with CPU fallback
off), so every A16 graph gets INT4 weights — LPBQ blocks of ``block_size`` inputs, or per
output channel — and A8 graphs keep INT8. The output ranges are recorded again with the
new weights, since the NPU outputs change with them.
"""

from __future__ import annotations

import torch

from quantkit.errors import QuantkitError
from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.precision.offset_budget import OffsetCandidate, choose_offset_graphs
from quantkit.precision.output_ranges import recalibrate_output_clips
from quantkit.precision.plan import PrecisionPlan
from quantkit.precision.search import graph_sensitivity
from quantkit.sensitivity.measure import fp_reference
from quantkit.weights import WeightCodes, collect_input_hessians, int8_weight_bytes, quantized_weights

__all__ = ["assign_four_bit_weights"]

# Sequences of the sensitivity tokens that rank graphs for block offsets: the ranking runs
# the model twice per graph (240 runs for SmolLM2), half of calibration's time with all 4.
OFFSET_RANKING_SEQUENCES = 2


def assign_four_bit_weights(
    layout: DecoderLayout,
    plan: ShadowPlan,
    precision: PrecisionPlan,
    weights: WeightCodes,
    calibration_ids: torch.Tensor,
    output_range_ids: torch.Tensor,
    block_size: int | None,
    rounding: str = "gptq",
    batch_size: int = 4,
    hessians: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    offsets: str = "none",
    offset_graphs: set[str] | None = None,
    bytes_budget: float | None = None,
    sensitivity_ids: torch.Tensor | None = None,
) -> WeightCodes:
    """Set every A16 graph of ``precision`` to 4-bit weights (in place, output clips
    recorded again over ``output_range_ids``) and return ``weights`` with theirs replaced.
    GPTQ ``rounding`` uses ``hessians`` or collects them over ``calibration_ids``;
    ``offsets``: LPBQ blocks with block offsets in that format (``runtime.qdq.OFFSET_FORMATS``), or ``"none"``,
    on the graphs whose kind is in ``offset_graphs`` (None: every graph) — with a
    ``bytes_budget`` (every graph's NPU weights at most this fraction of their INT8 bytes,
    ``--weight-bytes-budget``), on those of them whose offsets save the most KL divergence
    from FP per byte within it, measured over ``sensitivity_ids`` (``precision.offset_budget``)."""
    sixteen = [graph for graph in precision.graphs.values() if graph.activation_bits == 16]
    names = [name for graph in sixteen for name in graph.linear_names]
    budgeted = bytes_budget is not None and offsets != "none"
    if budgeted and sensitivity_ids is None:
        raise ValueError("a weight bytes budget needs the sequences to measure each graph's sensitivity on")
    if rounding == "gptq" and hessians is None:
        hessians = collect_input_hessians(layout, plan, calibration_ids, batch_size, progress, sites=[graph.linear_names[0] for graph in sixteen])
    eligible = [site for site, graph in precision.graphs.items() if graph.activation_bits == 16 and (offset_graphs is None or graph.kind in offset_graphs)]
    offset_names = {name for site in eligible for name in precision.graphs[site].linear_names}
    rule = plan.config.weight_scale_rule
    symmetric = quantized_weights(layout, [n for n in names if n not in offset_names or budgeted], rule, 4, block_size, rounding, hessians, progress)
    all_names = [n for graph in precision.graphs.values() for n in graph.linear_names]
    budget_bytes = int(bytes_budget * int8_weight_bytes(layout, all_names)) if budgeted else 0
    fixed = (
        sum((symmetric if graph.activation_bits == 16 else weights)[n].nbytes for graph in precision.graphs.values() for n in graph.linear_names)
        if budgeted
        else 0
    )
    if fixed > budget_bytes:
        raise QuantkitError(
            f"weight bytes budget: {budget_bytes / 1e6:.2f} MB is below the {fixed / 1e6:.2f} MB of the NPU weights without block offsets; raise --weight-bytes-budget"
        )
    with_offsets = quantized_weights(layout, [n for n in names if n in offset_names], rule, 4, block_size, rounding, hessians, progress, offsets)
    if budgeted:
        with_offsets = _offsets_within_budget(
            layout, plan, precision, eligible, {**weights, **symmetric}, with_offsets, sensitivity_ids, budget_bytes - fixed, progress
        )
    four = {**symmetric, **with_offsets}
    for graph in sixteen:
        first = four[graph.linear_names[0]]
        graph.weight_bits, graph.weight_block_size, graph.weight_block_offsets = 4, first.block_size, first.offset_format
    merged = {**weights, **four}
    recalibrate_output_clips(layout, plan, precision, output_range_ids, merged)
    return merged


def _offsets_within_budget(
    layout: DecoderLayout,
    plan: ShadowPlan,
    precision: PrecisionPlan,
    eligible: list[str],
    symmetric: WeightCodes,
    with_offsets: WeightCodes,
    sensitivity_ids: torch.Tensor,
    bytes_available: int,
    progress: bool,
) -> WeightCodes:
    """The offset weights of the ``eligible`` graphs (site names) that
    :func:`choose_offset_graphs` takes with ``bytes_available`` more than their ``symmetric``
    weights take, each graph's error being its KL divergence from FP with only it quantized
    (``precision.search.graph_sensitivity``, on the deployed arithmetic) without offsets and
    with them, over the first ``OFFSET_RANKING_SEQUENCES`` of ``sensitivity_ids``."""
    sensitivity_ids = sensitivity_ids[:OFFSET_RANKING_SEQUENCES]
    reference = fp_reference(layout, sensitivity_ids)
    without = graph_sensitivity(layout, plan, precision, sensitivity_ids, symmetric, progress, eligible, label="W4 without offsets", reference=reference)
    within = graph_sensitivity(
        layout, plan, precision, sensitivity_ids, {**symmetric, **with_offsets}, progress, eligible, label="W4 with offsets", reference=reference
    )
    size = lambda codes, site: sum(codes[n].nbytes for n in precision.graphs[site].linear_names)  # noqa: E731
    candidates = [OffsetCandidate(site, without[site], within[site], size(symmetric, site), size(with_offsets, site)) for site in eligible]
    chosen = choose_offset_graphs(candidates, bytes_available)
    return {n: with_offsets[n] for site in eligible if site in chosen for n in precision.graphs[site].linear_names}

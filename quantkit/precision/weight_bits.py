"""4-bit weights for the 16-bit NPU graphs of a precision plan (``--weight-bits 4``).

The HTP runs 4-bit weights only with 16-bit activations (probed on onnxruntime-qnn 2.7:
an INT4 weight with INT8 activations, per channel or LPBQ, is refused with CPU fallback
off), so every A16 graph gets INT4 weights — LPBQ blocks of ``block_size`` inputs, or per
output channel — and A8 graphs keep INT8. The output ranges are recorded again with the
new weights, since the NPU outputs change with them.
"""

from __future__ import annotations

import torch

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.precision.output_ranges import recalibrate_output_clips
from quantkit.precision.plan import PrecisionPlan
from quantkit.runtime.bundle import graph_kind
from quantkit.weights import WeightCodes, collect_input_hessians, quantized_weights

__all__ = ["assign_four_bit_weights"]


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
) -> WeightCodes:
    """Set every A16 graph of ``precision`` to 4-bit weights (in place, output clips
    recorded again over ``output_range_ids``) and return ``weights`` with theirs replaced.
    GPTQ ``rounding`` uses ``hessians`` or collects them over ``calibration_ids``;
    ``offsets``: LPBQ blocks with block offsets in that format (``runtime.qdq.OFFSET_FORMATS``), or ``"none"``,
    on the graphs whose kind is in ``offset_graphs`` (None: every graph)."""
    sixteen = [graph for graph in precision.graphs.values() if graph.activation_bits == 16]
    names = [name for graph in sixteen for name in graph.linear_names]
    if rounding == "gptq" and hessians is None:
        hessians = collect_input_hessians(layout, plan, calibration_ids, batch_size, progress, sites=[graph.linear_names[0] for graph in sixteen])
    offset_names = {name for graph in sixteen if offset_graphs is None or graph_kind(graph.linear_names[0]) in offset_graphs for name in graph.linear_names}
    four = {
        **quantized_weights(layout, [n for n in names if n in offset_names], plan.config.weight_scale_rule, 4, block_size, rounding, hessians, progress, offsets),
        **quantized_weights(layout, [n for n in names if n not in offset_names], plan.config.weight_scale_rule, 4, block_size, rounding, hessians, progress),
    }
    for graph in sixteen:
        graph.weight_bits, graph.weight_block_size = 4, four[graph.linear_names[0]].block_size
    merged = {**weights, **four}
    recalibrate_output_clips(layout, plan, precision, output_range_ids, merged)
    return merged

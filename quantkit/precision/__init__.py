"""Per-graph quantization plan: the activation bit-width of every NPU graph (A8 or A16)
and its weight bit-width (INT8, or INT4 on A16 graphs), decided in calibration on the
deployed arithmetic under the accuracy budget."""

from quantkit.precision.output_ranges import calibrated_precision, initial_precision, output_clips, record_npu_outputs
from quantkit.precision.plan import PRECISION_FILE, PRECISION_MODES, GraphPrecision, PrecisionPlan  # first: calibration's config imports it
from quantkit.precision.search import graph_sensitivity, promotion_order, search_activation_bits, search_weight_bits
from quantkit.precision.weight_bits import assign_four_bit_weights

__all__ = [
    "PRECISION_FILE",
    "PRECISION_MODES",
    "GraphPrecision",
    "PrecisionPlan",
    "record_npu_outputs",
    "output_clips",
    "initial_precision",
    "calibrated_precision",
    "graph_sensitivity",
    "promotion_order",
    "search_activation_bits",
    "search_weight_bits",
    "assign_four_bit_weights",
]

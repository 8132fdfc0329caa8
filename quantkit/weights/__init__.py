"""The NPU weights: formats (INT8 / INT4 per channel, LPBQ blockwise INT4) and rounding
(nearest or GPTQ against calibration Hessians)."""

from quantkit.weights.hessians import collect_input_hessians
from quantkit.weights.quantize import (
    WEIGHT_ROUNDINGS,
    WEIGHTS_FILE,
    WeightCodes,
    int8_weight_bytes,
    load_weights,
    quantize_weight,
    quantized_weights,
    save_weights,
)

__all__ = [
    "collect_input_hessians",
    "WEIGHT_ROUNDINGS",
    "WEIGHTS_FILE",
    "WeightCodes",
    "int8_weight_bytes",
    "load_weights",
    "quantize_weight",
    "quantized_weights",
    "save_weights",
]

"""Baselines for the accuracy comparison: SmoothQuant (static activations), LLM.int8()."""

from quantkit.baselines.llm_int8 import LLMInt8Linear, llm_int8_simulation
from quantkit.baselines.smoothquant import SmoothQuantLinear, smoothing_factors, smoothquant_simulation

__all__ = ["LLMInt8Linear", "llm_int8_simulation", "SmoothQuantLinear", "smoothing_factors", "smoothquant_simulation"]

"""Per-block sensitivity and block placement under an accuracy budget (arXiv 2407.05858 §3.4)."""

from quantkit.sensitivity.measure import BlockSensitivity, block_sensitivity
from quantkit.sensitivity.placement import CPU_FP, NPU, PlacementPlan, plan_placement

__all__ = ["BlockSensitivity", "block_sensitivity", "PlacementPlan", "plan_placement", "NPU", "CPU_FP"]

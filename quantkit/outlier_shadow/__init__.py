"""Shadow outlier execution (arXiv 2407.05858 §3.3): per-layer INT8 clip, outliers split
off to an FP shadow path over a few hot channels, outlier handling pruned on the least
important layers."""

from quantkit.outlier_shadow.config import ShadowConfig
from quantkit.outlier_shadow.plan import ShadowPlan, SiteShadowPlan
from quantkit.outlier_shadow.planner import build_shadow_plan
from quantkit.outlier_shadow.simulated_linear import DeployedLinear, simulated_quantization

__all__ = ["ShadowConfig", "ShadowPlan", "SiteShadowPlan", "build_shadow_plan", "DeployedLinear", "simulated_quantization"]

"""The simulated deployed arithmetic of a bundle's calibration, for runtime tests: the
transformers model with its NPU blocks' Linears swapped for the QDQ records."""

from __future__ import annotations

from pathlib import Path

import torch
from quantkit.runtime.engine import BundleModel

from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.precision import PrecisionPlan


@torch.no_grad()
def simulated_greedy(model_folder: Path, bundle_folder: Path, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy tokens of the simulated bundle after ``ids`` (full recompute each step)."""
    loaded = load_model(str(model_folder))
    plan = ShadowPlan.load(bundle_folder / "shadow_plan.json")
    precision = PrecisionPlan.load(bundle_folder / "precision.json")
    npu = {b for b, where in enumerate(BundleModel(bundle_folder).placement) if where == "npu"}
    tokens = ids.tolist()
    with simulated_quantization(loaded.layout, plan, precision, blocks=npu):
        for _ in range(steps):
            logits = loaded.model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(ids) :]

"""The calibration Hessians GPTQ rounds against: H = Σ clip(x)ᵀ clip(x) over calibration
tokens, one per shadow site (the Linears of a site read the same input). clip(x) is what
the NPU graph sees — the excess beyond the site's threshold goes to the FP shadow path
with FP weights (Eq. 1), so the weight error only ever multiplies the clipped input."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan

__all__ = ["collect_input_hessians"]


@torch.no_grad()
def collect_input_hessians(
    layout: DecoderLayout, plan: ShadowPlan, sequences: torch.Tensor, batch_size: int = 4, progress: bool = True, sites: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Per NPU Linear name: the float64 Σ clip(x)ᵀ clip(x) [in, in] of its site's input over
    ``sequences`` (the FP model; the Linears of a site share one tensor). ``sites``: the
    site names (first Linears) to collect, default all."""
    device = next(layout.model.parameters()).device
    chosen = {name: plan.sites[name] for name in (plan.sites if sites is None else sites)}
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, site in chosen.items():
        sums[name] = torch.zeros(site.num_channels, site.num_channels, dtype=torch.float64)

        def accumulate(module, args, name=name, threshold=site.threshold_):
            x = args[0].detach().flatten(0, -2).float().clamp(-threshold, threshold)
            sums[name] += (x.T @ x).double().cpu()

        handles.append(layout.linear(name).register_forward_pre_hook(accumulate))
    try:
        for batch in tqdm(sequences.split(batch_size), desc="GPTQ Hessians", unit="batch", disable=not progress):
            layout.backbone(input_ids=batch.to(device), use_cache=False)  # the inputs only: no LM head
    finally:
        for handle in handles:
            handle.remove()
    return {linear: sums[name] for name, site in chosen.items() for linear in site.linear_names}

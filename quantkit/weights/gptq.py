"""GPTQ rounding with fixed scales (Frantar et al., arXiv 2210.17323, Alg. 1): tensors in,
codes out — no modules, no hooks (the orchestrator is ``quantkit.weights.quantize``).

Rounding each weight to its nearest code ignores that the errors of one row add up in
that row's output. GPTQ rounds the columns of W one at a time and spreads each column's
rounding error over the columns not yet rounded, in the direction that keeps the
layer's output on the calibration inputs X closest (second-order, H = XᵀX):

    q_i   = clamp(round(w_i / s_i), −qmax, qmax)                       (column i)
    δ     = (w_i − q_i · s_i) / [H⁻¹]_ii                              (Eq. 3, Cholesky form)
    w_j  ← w_j − δ · [H⁻¹]_ij      for every later column j

The scales s (per channel or per LPBQ block) are chosen first and kept: the grid the
HTP runs is fixed, GPTQ only picks which of its codes each weight takes. Columns go in
descending order of H_ii ("act-order"), the largest inputs first; with fixed scales the
order changes no format. Written here because no library dependency of quantkit has it
for a given grid (llm-compressor's GPTQ re-derives its own scales per group).
"""

from __future__ import annotations

import torch

__all__ = ["gptq_codes"]


@torch.no_grad()
def gptq_codes(
    weight: torch.Tensor, hessian: torch.Tensor, element_scales: torch.Tensor, num_bits: int, damping: float = 0.01, block: int = 128, full_range: bool = False
) -> torch.Tensor:
    """int8 codes [out, in] of ``weight`` on the grid ``element_scales`` ([out, in] or
    [out, 1]), rounded by GPTQ against ``hessian`` = Σ xᵀx of the layer's inputs [in, in].
    ``damping`` × mean(diag H) is added to the diagonal (the paper's λ). ``full_range``:
    codes down to −qmax − 1 (as ``quant_primitives.quantize_symmetric``)."""
    qmax = 2 ** (num_bits - 1) - 1
    qmin = -qmax - int(full_range)
    weight = weight.detach().double().clone()
    out_features, in_features = weight.shape
    scales = element_scales.double().expand(out_features, in_features).clone()
    hessian = hessian.double().clone()
    dead = torch.diag(hessian) == 0  # inputs never seen: their weights cannot matter
    hessian[dead, dead] = 1.0
    order = torch.argsort(torch.diag(hessian), descending=True)
    weight, scales, hessian = weight[:, order], scales[:, order], hessian[order][:, order]
    hessian += torch.eye(in_features, dtype=hessian.dtype) * damping * torch.diag(hessian).mean()
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    codes = torch.zeros_like(weight)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        columns, errors = weight[:, start:end].clone(), torch.zeros(out_features, end - start, dtype=weight.dtype)
        local = inverse[start:end, start:end]
        for i in range(end - start):
            s = scales[:, start + i]
            q = torch.clamp(torch.round(columns[:, i] / s), qmin, qmax)
            codes[:, start + i] = q
            error = (columns[:, i] - q * s) / local[i, i]
            columns[:, i:] -= error[:, None] * local[i, i:][None, :]
            errors[:, i] = error
        weight[:, end:] -= errors @ inverse[start:end, end:]
    restored = torch.empty_like(codes)
    restored[:, order] = codes
    return restored.to(torch.int8)

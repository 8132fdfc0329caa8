"""Which 4-bit graphs get block offsets under a byte budget (``--weight-bytes-budget``).

Block offsets (``runtime.qdq``) buy accuracy with bytes: a code per LPBQ block and a scale
per row. A phone's memory is the budget a user has, so the choice is a knapsack: each
offset-eligible graph g saves output error ΔE_g for Δbytes_g, and the graphs go in
decreasing ΔE_g / Δbytes_g while the bytes last (greedy by ratio; a graph that does not
fit is passed over, a smaller one after it may still fit).

The error of a graph is the squared error its quantized weights add to its Linears'
outputs over the calibration tokens, the quantity GPTQ minimises (H = Σ clip(x)ᵀ clip(x)):

    E_g = Σ_{Linears of g} tr((W − Ŵ) H (W − Ŵ)ᵀ)

Which graphs go without offsets matters. SmolLM2's all-NPU W4A16 bundles (LPBQ 32, GPTQ;
word perplexity on ``quantkit_wikitext`` through the runtime, NPU weight bytes against
INT8's, README): int4 offsets on every graph +3.37% at 55.5%; on the gate_up and down
graphs only +6.04% at 55.0%; on the 94 of 120 graphs this knapsack picks at 0.55
(28 qkv, 21 o, 20 gate_up, 25 down) +5.03% at 55.0%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantkit.runtime.qdq import QuantizedWeight

__all__ = ["OffsetCandidate", "output_error", "choose_offset_graphs"]


@dataclass(frozen=True)
class OffsetCandidate:
    """One graph's two 4-bit forms: E_g and bytes without block offsets and with them."""

    graph: str
    error_without: float
    error_with: float
    bytes_without: int
    bytes_with: int

    @property
    def error_saved_per_byte(self) -> float:
        return (self.error_without - self.error_with) / max(self.bytes_with - self.bytes_without, 1)


@torch.no_grad()
def output_error(weight: torch.Tensor, quantized: QuantizedWeight, hessian: torch.Tensor) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ): the squared error ``quantized`` adds to the Linear's outputs
    over the tokens whose inputs summed to ``hessian`` [in, in]."""
    delta = weight.detach().double().cpu() - quantized.dequantize().double().cpu()
    return float(((delta @ hessian.double().cpu()) * delta).sum())


def choose_offset_graphs(candidates: list[OffsetCandidate], bytes_available: int) -> set[str]:
    """The graphs to give block offsets: by decreasing error saved per extra byte, each
    taken when its extra bytes still fit in ``bytes_available`` (those that save no error
    never)."""
    chosen, left = set(), bytes_available
    for candidate in sorted(candidates, key=lambda c: c.error_saved_per_byte, reverse=True):
        extra = candidate.bytes_with - candidate.bytes_without
        if candidate.error_with < candidate.error_without and extra <= left:
            chosen.add(candidate.graph)
            left -= extra
    return chosen

"""Which 4-bit graphs get block offsets under a byte budget (``--weight-bytes-budget``).

Block offsets (``runtime.qdq``) buy accuracy with bytes: a code per LPBQ block and a scale
per row. A phone's memory is the budget a user has, so the choice is a knapsack: each
offset-eligible graph g saves error ΔE_g for Δbytes_g, and the graphs go in
decreasing ΔE_g / Δbytes_g while the bytes last (greedy by ratio; a graph that does not
fit is passed over, a smaller one after it may still fit).

The error of a graph is what the bundle's accuracy feels: the KL divergence of the
model's next-token distribution from FP's with only that graph quantized (on the deployed
arithmetic, ``precision.search.graph_sensitivity``), measured with the graph's symmetric
4-bit weights and with its offset weights; ΔE_g is the difference. The output error GPTQ
minimises, tr((W − Ŵ) H (W − Ŵ)ᵀ), ranked them first and chose worse: it weighs an error
the same in every layer, however much of it reaches the logits. Measured on SmolLM2's
all-NPU W4A16 bundles (LPBQ 32, GPTQ, int4 offsets within 0.55 of the INT8 bytes; word
perplexity on ``quantkit_wikitext`` through the runtime, FP 39.026): ranked by output
error 40.99 (+5.03%, before the LPBQ scale search); by KL, with the scale search, 40.19
(+2.97%) with the KL over 2 × 256 tokens, 40.20 (+3.01%) over 4 × 256 (README).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OffsetCandidate", "choose_offset_graphs"]


@dataclass(frozen=True)
class OffsetCandidate:
    """One graph's two 4-bit forms: its error E_g and bytes without block offsets and with them."""

    graph: str
    error_without: float
    error_with: float
    bytes_without: int
    bytes_with: int

    @property
    def error_saved_per_byte(self) -> float:
        return (self.error_without - self.error_with) / max(self.bytes_with - self.bytes_without, 1)


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

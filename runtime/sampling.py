"""Choosing the next token from logits: greedy, or sampled with temperature, top-k, top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplingConfig", "next_token"]


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 → greedy (argmax)
    top_k: int = 0  # 0 → no limit
    top_p: float = 1.0  # nucleus: smallest set of tokens whose probability reaches top_p
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature: got {self.temperature}, expected ≥ 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k: got {self.top_k}, expected ≥ 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: got {self.top_p}, expected 0 < top_p ≤ 1")


def next_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> int:
    """One token id from the logits [vocab] of the last position."""
    if config.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= config.top_p  # keep the token that crosses top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))

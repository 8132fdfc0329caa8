"""Perplexity of a causal LM over fixed token sequences: exp(mean next-token NLL)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["perplexity", "mean_nll"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def mean_nll(logits_fn: LogitsFn, sequences: torch.Tensor, batch_size: int = 1, desc: str = "perplexity", progress: bool = True) -> float:
    """Mean negative log-likelihood (nats/token) of tokens 1..L-1 of each sequence given
    the tokens before it; ``logits_fn`` maps input ids [B, L] to logits [B, L, V]."""
    total_nll = 0.0
    total_tokens = 0
    batches = sequences.split(batch_size)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        logits = logits_fn(batch)
        targets = batch[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += targets.numel()
    return total_nll / total_tokens


def perplexity(logits_fn: LogitsFn, sequences: torch.Tensor, batch_size: int = 1, desc: str = "perplexity", progress: bool = True) -> float:
    """exp(mean NLL) over ``sequences``; see :func:`mean_nll`.

    >>> import torch
    >>> uniform = lambda ids: torch.zeros(*ids.shape, 10)   # a model that knows nothing
    >>> round(perplexity(uniform, torch.randint(0, 10, (2, 8)), progress=False), 6)
    10.0
    """
    return math.exp(mean_nll(logits_fn, sequences, batch_size, desc, progress))

"""Perplexity of a causal LM over fixed token sequences: exp(mean next-token NLL)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["perplexity", "mean_nll", "sequence_nll"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def sequence_nll(logits_fn: LogitsFn, sequences: torch.Tensor, batch_size: int = 1, desc: str = "perplexity", progress: bool = True) -> torch.Tensor:
    """Per sequence [N] (float64): the mean negative log-likelihood (nats/token) of its
    tokens 1..L-1 given the tokens before it; ``logits_fn`` maps input ids [B, L] to
    logits [B, L, V]."""
    values = []
    for batch in tqdm(sequences.split(batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        logits = logits_fn(batch)
        targets = batch[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # [B, L-1]
        values.append(nll.double().sum(dim=1).cpu() / targets.shape[1])
    return torch.cat(values)


def mean_nll(logits_fn: LogitsFn, sequences: torch.Tensor, batch_size: int = 1, desc: str = "perplexity", progress: bool = True) -> float:
    """Mean negative log-likelihood (nats/token) over every sequence's tokens 1..L-1 (the
    sequences have one length: the mean of :func:`sequence_nll`)."""
    return float(sequence_nll(logits_fn, sequences, batch_size, desc, progress).mean())


def perplexity(logits_fn: LogitsFn, sequences: torch.Tensor, batch_size: int = 1, desc: str = "perplexity", progress: bool = True) -> float:
    """exp(mean NLL) over ``sequences``; see :func:`mean_nll`.

    >>> import torch
    >>> uniform = lambda ids: torch.zeros(*ids.shape, 10)   # a model that knows nothing
    >>> round(perplexity(uniform, torch.randint(0, 10, (2, 8)), progress=False), 6)
    10.0
    """
    return math.exp(mean_nll(logits_fn, sequences, batch_size, desc, progress))

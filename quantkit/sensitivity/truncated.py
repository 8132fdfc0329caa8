"""Run a decoder from block b on: the FP hidden states entering each block are recorded
once, and a measurement that quantizes only block b's Linears starts there — the blocks
before b compute exactly what they computed in FP, so running them again is wasted work
(the per-graph and per-block sensitivities quantize one block at a time: on SmolLM2 this
skips half of the block compute).

Model-agnostic: the blocks before b are swapped for a pass-through (the backbone's loop
and its per-layer attention types stay as they are) and the recorded hidden state goes in
as ``inputs_embeds``. transformers offers no "start at layer b" entry point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from quantkit.models.architecture import DecoderLayout

__all__ = ["record_block_inputs", "starting_at_block"]


class _PassThrough(nn.Module):
    """A decoder layer that returns its hidden states unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@torch.no_grad()
def record_block_inputs(layout: DecoderLayout, batch: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states entering every block for ``batch`` ([B, L] ids), FP model."""
    inputs: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach())

    handles = [block.register_forward_pre_hook(hook, with_kwargs=True) for block in layout.blocks]
    try:
        layout.model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


@contextmanager
def starting_at_block(layout: DecoderLayout, block: int) -> Iterator[None]:
    """Within it, blocks < ``block`` pass their input through; call the model with
    ``inputs_embeds`` = the recorded input of ``block``."""
    blocks = layout.blocks
    originals = [blocks[i] for i in range(block)]
    try:
        for i in range(block):
            blocks[i] = _PassThrough()
        yield
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original

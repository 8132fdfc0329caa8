"""Per-block sensitivity: what quantizing one block alone costs (arXiv 2407.05858 §3.4).

For block b, only b's Linears run quantized (with their shadow path); the change of the
validation NLL and the KL divergence of the output distribution from FP's are b's
sensitivity.

Why not AIMET's QuantAnalyzer: it measures per-layer sensitivity by toggling AIMET
quantizers inside a QuantizationSimModel, and the scheme measured here — clipped INT8
input plus the FP shadow add-back of Eq. 1 — is not expressible as AIMET quantizers.
The method is the same (quantize one unit, compare with FP), applied to our simulation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan
from quantkit.outlier_shadow.simulated_linear import WeightCodes, simulated_quantization
from quantkit.sensitivity.truncated import record_block_inputs, starting_at_block

if TYPE_CHECKING:
    from quantkit.precision.plan import PrecisionPlan

__all__ = ["BlockSensitivity", "FpReference", "block_sensitivity", "nll_and_kl", "fp_reference"]


@dataclass(frozen=True)
class BlockSensitivity:
    block: int
    delta_nll: float  # nats/token, quantized block b alone minus FP
    kl: float  # mean KL(P_fp || P_quantized) per token, nats

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _log_probs(layout: DecoderLayout, batch: torch.Tensor, start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    if start is None:
        return F.log_softmax(layout.model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
    block, hidden = start
    with starting_at_block(layout, block):
        return F.log_softmax(layout.model(inputs_embeds=hidden, use_cache=False).logits.float(), dim=-1)


@dataclass
class FpReference:
    """The FP model's run over the sequences that every sensitivity run is compared with,
    per batch: its mean next-token NLL, log-probs, probabilities (their exp, kept: each
    of the hundreds of KL measurements needs them) and the hidden states entering each block."""

    nll: float
    log_probs: list[torch.Tensor]
    probs: list[torch.Tensor]
    block_inputs: list[list[torch.Tensor]]


@torch.no_grad()
def nll_and_kl(
    layout: DecoderLayout, sequences: torch.Tensor, reference: FpReference | None, batch_size: int = 1, start_block: int = 0
) -> tuple[float, float, list[torch.Tensor]]:
    """Mean next-token NLL, mean KL(P_fp ‖ P) from ``reference`` (0 if None), and the
    log-probs. With ``start_block`` > 0 the model runs from that block on, fed the FP
    hidden states ``reference.block_inputs[batch][start_block]`` (valid when only blocks ≥
    ``start_block`` differ from FP; see ``truncated.py``)."""
    device = next(layout.model.parameters()).device
    total_nll, total_kl, count, all_log_probs = 0.0, 0.0, 0, []
    for index, batch in enumerate(sequences.split(batch_size)):
        batch = batch.to(device)
        start = (start_block, reference.block_inputs[index][start_block]) if start_block > 0 else None
        log_probs = _log_probs(layout, batch, start)
        targets = batch[:, 1:]
        total_nll += float(-log_probs[:, :-1].gather(-1, targets.unsqueeze(-1)).sum())
        if reference is not None:
            # KL = Σ_v p_fp · (log p_fp − log p), in one buffer
            divergence = reference.log_probs[index] - log_probs
            total_kl += float(divergence.mul_(reference.probs[index]).sum(dim=-1)[:, :-1].sum())
        count += targets.numel()
        all_log_probs.append(log_probs)
    return total_nll / count, total_kl / count, all_log_probs


def fp_reference(layout: DecoderLayout, sequences: torch.Tensor, batch_size: int = 1) -> FpReference:
    """The FP model's :class:`FpReference` over ``sequences``, in batches of ``batch_size``."""
    fp_nll, _, fp_log_probs = nll_and_kl(layout, sequences, None, batch_size)
    block_inputs = [record_block_inputs(layout, batch.to(next(layout.model.parameters()).device)) for batch in sequences.split(batch_size)]
    return FpReference(fp_nll, fp_log_probs, [log_probs.exp() for log_probs in fp_log_probs], block_inputs)


def block_sensitivity(
    layout: DecoderLayout,
    plan: ShadowPlan,
    precision: PrecisionPlan,
    sequences: torch.Tensor,
    batch_size: int = 1,
    progress: bool = True,
    weights: WeightCodes | None = None,
    blocks: Iterable[int] | None = None,
    reference: FpReference | None = None,
) -> list[BlockSensitivity]:
    """Sensitivity of each of ``blocks`` (default every block), measured on ``sequences``
    against the FP model, with the block's graphs at the bit-widths and output ranges of
    ``precision`` (the deployed arithmetic). Each run starts at its block (the ones before
    are FP). ``reference``: the FP run over ``sequences`` when the caller has it."""
    reference = reference or fp_reference(layout, sequences, batch_size)
    results = []
    measured = range(layout.num_blocks) if blocks is None else sorted(blocks)
    for block in tqdm(measured, desc="block sensitivity", unit="block", disable=not progress):
        with simulated_quantization(layout, plan, precision, blocks={block}, weights=weights):
            nll, kl, _ = nll_and_kl(layout, sequences, reference, batch_size, block)
        results.append(BlockSensitivity(block=block, delta_nll=nll - reference.nll, kl=kl))
    return results

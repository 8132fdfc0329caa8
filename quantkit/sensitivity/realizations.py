"""How far the deployed arithmetic's perplexity moves between executions that differ only
in float rounding.

Two correct executors of the same bundle (ONNX Runtime CPU, the torch twin, QNN HTP) sum
in different orders, so a few values land on the other side of a rounding boundary; at
8-bit activations each such flip is a whole quantization step, and the flips cascade
through the blocks. Measured on SmolLM2 (auto bundle): a relative 1e-6 perturbation of the
input embeddings moves the logits by up to 3 (FP: 5e-5; every graph A16: 0.04), and the
exported bundle's runtime perplexity on the validation tokens differed from the
simulation's by 0.7%. A single perplexity of an A8-heavy model is one draw; this measures
the spread of draws so the summary can state it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from quantkit.eval.perplexity import sequence_nll
from quantkit.models.architecture import DecoderLayout

__all__ = ["perplexity_realizations", "nll_realizations", "relative_ppl_interval", "REALIZATION_NOISE", "CONFIDENCE_Z"]

REALIZATION_NOISE = 1e-6  # relative perturbation of the input embeddings: float32 rounding scale


def perplexity_realizations(
    layout: DecoderLayout, sequences: torch.Tensor, count: int = 3, relative: float = REALIZATION_NOISE, progress: bool = True
) -> list[float]:
    """Perplexity of ``layout.model`` over ``sequences`` in each of :func:`nll_realizations`."""
    return [math.exp(float(row.mean())) for row in nll_realizations(layout, sequences, count, relative, progress)]


@torch.no_grad()
def nll_realizations(
    layout: DecoderLayout, sequences: torch.Tensor, count: int = 3, relative: float = REALIZATION_NOISE, progress: bool = True
) -> torch.Tensor:
    """Mean NLL per sequence [count, N] of ``layout.model`` (as it is: run it inside
    ``simulated_quantization``) over ``sequences`` with the input embeddings multiplied by
    1 + ``relative``·N(0, 1), one seeded draw per realization (row)."""
    device = next(layout.model.parameters()).device
    embed: Callable[[torch.Tensor], torch.Tensor] = layout.backbone.embed_tokens
    values = []
    for seed in tqdm(range(count), desc="rounding realizations", unit="run", disable=not progress):
        generator = torch.Generator().manual_seed(seed)

        def logits(ids: torch.Tensor) -> torch.Tensor:
            embeddings = embed(ids.to(device))
            noise = torch.randn(embeddings.shape, generator=generator).to(device)
            return layout.model(inputs_embeds=embeddings * (1 + relative * noise), use_cache=False).logits

        values.append(sequence_nll(logits, sequences, progress=False))
    return torch.stack(values)


CONFIDENCE_Z = 1.645  # one-sided 95% normal quantile


def relative_ppl_interval(nll: torch.Tensor, fp_nll: torch.Tensor, z: float = CONFIDENCE_Z) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the relative perplexity increase over FP, exp(ΔNLL) − 1,
    from per-window NLLs ``nll`` [realizations, N] and ``fp_nll`` [N] of the same windows.

    ΔNLL_w is each window's NLL minus FP's (paired), averaged over the realizations; the
    interval is mean ± z · sd(ΔNLL_w) / √N: how far the mean over windows of other text
    like these may lie (the windows are the sample, the rounding realizations are
    averaged inside each), not only the rounding draw of this text."""
    delta = (nll.double() - fp_nll.double()).mean(dim=0)
    mean = float(delta.mean())
    spread = z * float(delta.std()) / math.sqrt(delta.numel()) if delta.numel() > 1 else 0.0
    return math.expm1(mean), math.expm1(mean - spread), math.expm1(mean + spread)

"""lm-eval model ``hf-scored``: lm-eval's own ``hf`` model (its batching, sorting,
truncation and scoring, untouched) with the LM head computed only at the positions
lm-eval reads — the FP reference of ``quantkit eval`` and ``quantkit regress``.

Why. lm-eval's ``HFLM._loglikelihood_tokens`` asks the model for logits at every input
position, log-softmaxes all of them over the vocabulary, and keeps only the
continuation's. On the shipped suite 12% of the 233k input tokens are continuation
tokens (last-word: one or two per ~76-token item), and SmolLM2's LM head is a fifth of
its MACs per token (576 × 49152 against ~106M in the blocks), so most of that work and a
[batch, length, 49152] float tensor per batch are thrown away. Transformers' causal LMs
take ``logits_to_keep=K`` (logits of the last K positions only), and lm-eval's slicing
already allows logits shorter or longer than the input (``ctx_len = inplen +
(logits.shape[0] - padding_len_inp)``, written for prompt-tuning's virtual tokens): with
the last K positions returned, ``logits[ctx_len - contlen : ctx_len]`` is the same
continuation as before as long as K covers every row's continuation. This module
computes that K per batch; nothing else of lm-eval changes, so the scores equal the
``hf`` model's up to the LM head's float summation order (a test shows it).

No library does this: lm-eval 0.4.13 has no option for it (its ``logits_cache`` only
shares one-token continuations), so the subclass is ours.

>>> import quantkit.eval.hf_reference, lm_eval                              # doctest: +SKIP
>>> lm_eval.simple_evaluate(model="hf-scored", model_args="pretrained=folder,dtype=float32",
...                         tasks=["quantkit_lastword"], task_manager=quantkit.eval.tasks.task_manager())  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

__all__ = ["ScoredPositionsHFLM", "positions_to_keep", "FP_REFERENCE_MODEL"]

FP_REFERENCE_MODEL = "hf-scored"


def positions_to_keep(rows: torch.Tensor, longest_continuation: dict[tuple[int, ...], int]) -> int | None:
    """How many trailing positions of the right-padded batch ``rows`` [batch, length]
    hold every row's scored continuation, or None when a row is not one of the inputs in
    ``longest_continuation`` (input tokens → the longest continuation scored on them).

    lm-eval pads with token 0, which is also a real token, so every split of a row into
    input + zero padding that names a known input is considered and the largest need is
    kept: keeping more positions than needed changes nothing but the cost."""
    length = rows.shape[1]
    keep = 0
    for row in rows.tolist():
        need = None
        for end in range(length, 0, -1):
            if end < length and row[end] != 0:
                break
            continuation = longest_continuation.get(tuple(row[:end]))
            if continuation is not None:
                need = max(need or 0, length - end + continuation)
        if need is None:
            return None
        keep = max(keep, need)
    return min(keep, length)


@register_model(FP_REFERENCE_MODEL)
class ScoredPositionsHFLM(HFLM):
    """lm-eval's ``hf`` model, with logits only at the positions that are scored (the
    module docstring says how). Model arguments are exactly ``hf``'s."""

    _longest_continuation: dict[tuple[int, ...], int] | None = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        longest: dict[tuple[int, ...], int] = {}
        for _, context_enc, continuation_enc in requests:
            # The model's input, exactly as lm-eval builds it (left-truncated, last token dropped).
            model_input = tuple((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1])
            longest[model_input] = max(longest.get(model_input, 0), len(continuation_enc))
        self._longest_continuation = longest
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._longest_continuation = None

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        keep = None
        if self._longest_continuation is not None and attn_mask is None and labels is None:
            keep = positions_to_keep(inps, self._longest_continuation)
        if keep is None or keep == inps.shape[1]:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None):
            return self.model(inps, logits_to_keep=keep).logits

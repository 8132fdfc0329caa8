"""lm-eval model ``hf-scored``: lm-eval's own ``hf`` model (its batching, sorting,
truncation and scoring) with two savings that change no score beyond float summation
order — the FP reference of ``quantkit eval`` and ``quantkit regress``.

1. **LM head only where lm-eval reads.** ``HFLM._loglikelihood_tokens`` asks for logits
   at every input position, log-softmaxes all of them over the vocabulary and keeps only
   the continuation's. On the shipped suite 12% of the 233k input tokens are
   continuation tokens (last-word: one or two per ~76-token item), and SmolLM2's LM head
   is a fifth of its MACs per token (576 × 49152 against ~106M in the blocks).
   Transformers' causal LMs take ``logits_to_keep=K`` (the last K positions only), and
   lm-eval's slicing already allows logits shorter or longer than the input (``ctx_len =
   inplen + (logits.shape[0] - padding_len_inp)``, written for prompt-tuning's virtual
   tokens): with the last K positions returned, ``logits[ctx_len - contlen : ctx_len]``
   is the same continuation as long as K covers every row's. :func:`positions_to_keep`
   computes that K per batch.
2. **A shared context once.** Requests that share a context and have several-token
   continuations (multiple-choice options) run the context once and the options from its
   KV cache, in one batch (:func:`shared_context_groups`); lm-eval's own cache shares a
   context only among one-token continuations. The choice task's 800 requests (75.5k
   tokens) become 200 contexts plus 800 options (34.6k tokens).

Tests compare every score with lm-eval's ``hf`` model on the same requests. No library
does either: lm-eval 0.4.13 has no option for them, so the subclass is ours.

>>> import quantkit.eval.hf_reference, lm_eval                              # doctest: +SKIP
>>> lm_eval.simple_evaluate(model="hf-scored", model_args="pretrained=folder,dtype=float32",
...                         tasks=["quantkit_lastword"], task_manager=quantkit.eval.tasks.task_manager())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

__all__ = ["ScoredPositionsHFLM", "positions_to_keep", "shared_context_groups", "context_batches", "FP_REFERENCE_MODEL"]

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


def shared_context_groups(requests, max_length: int) -> dict[tuple[int, ...], list[int]]:
    """Context tokens → indices of the requests ``(key, context, continuation)`` that share
    that context, for contexts shared by two or more requests whose continuations are not
    all one token (those lm-eval already scores with one forward) and that lm-eval would
    not left-truncate (context + continuation ≤ ``max_length`` + 1)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_, context, continuation) in enumerate(requests):
        if len(context) + len(continuation) <= max_length + 1:
            groups.setdefault(tuple(context), []).append(i)
    return {context: indices for context, indices in groups.items() if len(indices) > 1 and any(len(requests[i][2]) > 1 for i in indices)}


def context_batches(groups: dict[tuple[int, ...], list[int]], rows_per_batch: int) -> list[list[tuple[int, ...]]]:
    """The shared contexts in batches, longest first as lm-eval sorts (little padding), each
    batch holding contexts whose continuations together fill at most ``rows_per_batch``
    rows (a context with more continuations than that gets a batch of its own)."""
    batches: list[list[tuple[int, ...]]] = []
    rows = 0
    for context in sorted(groups, key=len, reverse=True):
        if not batches or rows + len(groups[context]) > rows_per_batch:
            batches.append([])
            rows = 0
        batches[-1].append(context)
        rows += len(groups[context])
    return batches


@register_model(FP_REFERENCE_MODEL)
class ScoredPositionsHFLM(HFLM):
    """lm-eval's ``hf`` model, with logits only at the positions that are scored and
    shared contexts run once (the module docstring says how). Model arguments are exactly
    ``hf``'s."""

    _longest_continuation: dict[tuple[int, ...], int] | None = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal" or not self._takes_logits_to_keep():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # Contexts of a batch are right-padded, so a continuation's cache index runs ahead of
        # its position by the padding; a sliding-window mask counts indices, so keep every
        # padded row within half a window (both counts then lie inside it).
        window = getattr(getattr(self.model, "config", None), "sliding_window", None)
        limit = self.max_length + 1 if not window else min(self.max_length + 1, window // 2)
        groups = shared_context_groups(requests, limit - 1)
        shared = {i for indices in groups.values() for i in indices}
        rest = [i for i in range(len(requests)) if i not in shared]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if rest:
            for i, answer in zip(rest, self._scored_positions_only([requests[i] for i in rest], disable_tqdm, override_bs), strict=True):
                results[i] = answer
        rows_per_batch = override_bs or (self.batch_size_per_gpu if isinstance(self.batch_size_per_gpu, int) else 16)
        batches = context_batches(groups, rows_per_batch)
        progress = tqdm(total=len(shared), desc="Shared-context requests", disable=disable_tqdm or self.rank != 0)
        for batch in batches:
            answers = self._score_shared_contexts([list(c) for c in batch], [[requests[i][2] for i in groups[c]] for c in batch])
            for i, answer in zip((i for c in batch for i in groups[c]), answers, strict=True):
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            progress.update(len(answers))
        progress.close()
        return results

    @torch.no_grad()
    def _score_shared_contexts(self, contexts: list[list[int]], continuations: list[list[list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is-greedy) of every continuation of every context, in order.

        The contexts run once, right-padded in one batch (causal: a padded row's real
        positions never see its padding); the continuations then run from the contexts'
        KV cache (each context's cache repeated per continuation), with the padded cache
        slots masked and positions continuing each context's own length."""
        lengths = torch.tensor([len(c) for c in contexts], device=self.device)
        width = int(lengths.max())
        ids = torch.tensor([c + [0] * (width - len(c)) for c in contexts], device=self.device)
        keep = width - int(lengths.min()) + 1
        # transformers 5.24 names the KV cache `cache`; earlier 5.x `past_key_values`.
        name = "cache" if "cache" in self._forward_parameters else "past_key_values"
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None):
            prefix = self.model(ids, use_cache=True, logits_to_keep=keep)
            last = prefix.logits[torch.arange(len(contexts)), lengths - 1 - (width - keep)]
            first = F.log_softmax(last, dim=-1, dtype=self.softmax_dtype)  # predicts each continuation's first token
            owner = torch.tensor([g for g, options in enumerate(continuations) for _ in options], device=self.device)
            tails = [option[:-1] for options in continuations for option in options]
            longest = max(len(tail) for tail in tails)
            rest = None
            if longest:
                cache = getattr(prefix, name)
                cache.batch_select_indices(owner)
                rows = torch.tensor([tail + [0] * (longest - len(tail)) for tail in tails], device=self.device)
                seen = torch.arange(width, device=self.device)[None, :] < lengths[owner][:, None]
                mask = torch.cat([seen, torch.ones(len(tails), longest, dtype=torch.bool, device=self.device)], dim=1).long()
                positions = lengths[owner][:, None] + torch.arange(longest, device=self.device)[None, :]
                logits = self.model(rows, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache}).logits
                rest = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        answers = []
        for row, option in enumerate(option for options in continuations for option in options):
            scored = first[owner[row], None] if rest is None else torch.cat([first[owner[row], None], rest[row, : len(option) - 1]])
            targets = torch.tensor(option, device=scored.device)
            answers.append((float(scored.gather(1, targets[:, None]).sum()), bool((scored.argmax(dim=-1) == targets).all())))
        return answers

    def _scored_positions_only(self, requests, disable_tqdm: bool, override_bs: int | None):
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

    @functools.cached_property
    def _forward_parameters(self) -> frozenset[str]:
        """The model forward's argument names, read once."""
        return frozenset(inspect.signature(self.model.forward).parameters)

    def _takes_logits_to_keep(self) -> bool:
        """Whether the model's forward accepts ``logits_to_keep`` (transformers' causal LMs
        do; a model that does not runs as lm-eval's ``hf``)."""
        return "logits_to_keep" in self._forward_parameters

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        keep = None
        if self._longest_continuation is not None and attn_mask is None and labels is None:  # set only where logits_to_keep is taken
            keep = positions_to_keep(inps, self._longest_continuation)
        if keep is None or keep == inps.shape[1]:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None):
            return self.model(inps, logits_to_keep=keep).logits

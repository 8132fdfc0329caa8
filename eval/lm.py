"""lm-eval model ``quantkit``: scores text with a deployment bundle through the runtime
(``quantkit.runtime.engine.BundleModel``), not with the Hugging Face model.

Importing this module registers the model with lm-eval (lm-eval 0.4.13 has no plugin
entry point for models, so the import is what makes ``model="quantkit"`` known;
:func:`quantkit.eval.evaluate` does it for you). Model arguments:

- ``bundle`` (required): the bundle folder written by ``quantkit export``;
- ``npu``: ``cpu`` (ONNX Runtime CPU provider, default) or ``qnn`` (QNN HTP backend);
- ``kernels``: with ``npu=cpu``, ``integer`` (default: the A8 graphs on int8 GEMMs) or
  ``qdq`` (every graph as written) — ``quantkit.runtime.npu``;
- ``shadow``: ``True`` (default) or ``False`` to drop the shadow outlier path;
- ``max_length``: the longest input in tokens (default: the bundle's context length);
- ``max_gen_toks``: default generation length (256), as lm-eval's ``hf`` model;
- ``pack_tokens``: tokens per packed prefill (2048); 0 runs one prefill per input.

Tokenization is the bundle's ``tokenizer/`` folder, used the way lm-eval's ``hf`` model
uses the same tokenizer, so scores compare one to one with
``model="hf", model_args="pretrained=<FP folder>,dtype=float32"``.

Cost. Requests are planned before anything runs: an input that is a prefix of a longer
input (the same context scored with a one-token and a longer continuation, identical
requests) is read off the longer one's logits, which are exact for it because the
runtime is causal and quantizes with static scales. The remaining inputs become a radix
tree of segments (``quantkit.runtime.packing``): a context shared by several inputs
(multiple-choice options) is computed once and its continuations continue from its KV
cache; segments are packed several to a static chunk, ``pack_tokens`` tokens to one
packed prefill, and only the rows whose log-probabilities are asked for go through the
LM head. ``pack_tokens=0`` runs one prefill per distinct input (the unpacked reference).
Under ``accelerate launch`` lm-eval hands each process its share of the requests
(``rank`` / ``world_size`` from the environment, as its ``hf`` model) and gathers the
results itself.

>>> import quantkit.eval.lm, lm_eval                                     # doctest: +SKIP
>>> lm_eval.simple_evaluate(model="quantkit", model_args="bundle=bundle", tasks=["quantkit_lastword"],
...                         task_manager=quantkit.eval.tasks.task_manager(), limit=10)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from quantkit.runtime.packing import prefix_tree
from tqdm import tqdm

from quantkit.errors import EvaluationError

__all__ = ["QuantkitLM", "plan_prefixes"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_GEN_TOKS = 256
_DEFAULT_PACK_TOKENS = 2048  # tokens per packed prefill: a few dozen chunks in flight for the out-of-order schedule


def plan_prefixes(inputs: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], list[int]]]:
    """Group token sequences so that each group runs once: (the sequence to run, indices
    of ``inputs`` that are a prefix of it). Longest first; every index appears once.

    >>> plan_prefixes([(1, 2), (1, 2, 3), (4,), (1, 2, 3)])
    [((1, 2, 3), [1, 3, 0]), ((4,), [2])]
    """
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    trie: dict = {}  # token -> child node; the key None holds the group that made the node
    groups: list[tuple[tuple[int, ...], list[int]]] = []
    for index in order:
        node = trie
        for token in inputs[index]:
            node = node.get(token)
            if node is None:
                break
        if node is not None and None in node:
            groups[node[None]][1].append(index)
            continue
        node = trie
        for token in inputs[index]:
            node = node.setdefault(token, {})
            node.setdefault(None, len(groups))
        groups.append((inputs[index], [index]))
    return groups


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise EvaluationError(f"model argument {name}: got {value!r}, expected True or False")


@register_model("quantkit")
class QuantkitLM(TemplateLM):
    """A bundle as an lm-eval language model (see the module docstring for its arguments)."""

    def __init__(
        self,
        bundle: str | Path | None = None,
        npu: str = "cpu",
        kernels: str = "integer",
        shadow: bool | str = True,
        max_length: int | None = None,
        max_gen_toks: int = _DEFAULT_MAX_GEN_TOKS,
        pack_tokens: int | str = _DEFAULT_PACK_TOKENS,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        from quantkit.runtime.engine import BundleModel
        from transformers import AutoTokenizer

        if bundle is None:
            raise EvaluationError("the quantkit model needs model_args bundle=<folder written by `quantkit export`>")
        if device not in (None, "cpu"):
            logger.warning("the quantkit runtime runs on the CPU and the NPU backend chosen by npu=; ignoring device=%s", device)
        self._device = torch.device("cpu")
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: lm-eval splits the requests by rank
            from accelerate import Accelerator
            from accelerate.utils import InitProcessGroupKwargs

            self.accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            logger.info("quantkit lm-eval model: process %d of %d", self._rank, self._world_size)
        self.bundle = Path(bundle)
        self.model = BundleModel(self.bundle, npu=npu, shadow=_as_bool("shadow", shadow), kernels=kernels)
        context_length = int(self.model.manifest["context_length"])
        self._max_length = int(max_length) if max_length is not None else context_length
        if not 1 <= self._max_length <= context_length:
            raise EvaluationError(f"model argument max_length: got {max_length}, expected 1 to {context_length} (the bundle's context length)")
        self.max_gen_toks = int(max_gen_toks)
        self.pack_tokens = int(pack_tokens)
        if self.pack_tokens < 0:
            raise EvaluationError(f"model argument pack_tokens: got {pack_tokens}, expected ≥ 0 (0: one prefill per input)")
        self.batch_size = batch_size  # the runtime reads one sequence at a time; kept for lm-eval's records
        tokenizer_folder = self.bundle / "tokenizer"
        if not tokenizer_folder.is_dir():
            raise EvaluationError(f"{self.bundle}: no tokenizer/ folder; export the bundle again with this quantkit")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)

    # -- several processes: lm-eval's collectives, as its hf model implements them --------
    def all_gather(self, tensor):
        return tensor if self.world_size <= 1 else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # -- what lm-eval asks of a model ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # As lm-eval's hf model: BOS when the tokenizer has one, else EOS.
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.bundle / "tokenizer").replace("/", "__")

    def get_model_info(self) -> dict:
        manifest = self.model.manifest
        return {
            "bundle": str(self.bundle),
            "source_model": manifest.get("source_model"),
            "quantization": manifest.get("quantization"),
            "chunk_size": manifest.get("chunk_size"),
        }

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs) -> list[int]:
        # As lm-eval's hf model: the tokenizer's own default unless told, never a second BOS.
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            special = {"add_special_tokens": False}
        encoding = self.tokenizer.encode(string, **special)
        return encoding[-left_truncate_len:] if left_truncate_len else encoding

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- scoring ------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation token), all greedy) per (key, context, continuation)
        token request; each distinct input runs once (see :func:`plan_prefixes`)."""
        inputs, continuations = [], []
        for _, context, continuation in requests:
            if not continuation:
                raise EvaluationError("a loglikelihood request has an empty continuation")
            if len(continuation) > self.max_length:
                raise EvaluationError(f"a continuation of {len(continuation)} tokens does not fit max_length {self.max_length}")
            whole = (context + continuation)[-(self.max_length + 1) :]  # left-truncated, as the hf model does
            inputs.append(tuple(whole[:-1]))
            continuations.append(continuation)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")

        def score(index: int, logits: torch.Tensor) -> None:
            """``logits``: the rows predicting request ``index``'s continuation tokens."""
            logprobs = F.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(continuations[index], dtype=torch.long)
            answer = (float(logprobs.gather(1, targets[:, None]).sum()), bool((logprobs.argmax(-1) == targets).all()))
            results[index] = answer
            if requests[index][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            progress.update(1)

        groups = plan_prefixes(inputs)
        if self.pack_tokens == 0:  # one prefill per distinct input: the unpacked reference
            for sequence, members in groups:
                logits = self.model.prefill(torch.tensor(sequence, dtype=torch.long))
                for index in members:
                    end, length = len(inputs[index]), len(continuations[index])
                    score(index, logits[end - length : end])
        else:
            self._score_packed(groups, inputs, continuations, score)
        progress.close()
        return results

    def _score_packed(self, groups, inputs, continuations, score) -> None:
        """Every distinct input as a path of a prefix tree (shared contexts once), packed
        into prefills of about ``pack_tokens`` tokens — a context shared beyond one prefill
        is computed again in the next — and each request's continuation rows read off."""
        tree = prefix_tree([sequence for sequence, _ in groups])
        batch: list[int] = []
        members: set[int] = set()
        tokens = 0  # of the batch's segments
        for group in sorted(range(len(groups)), key=lambda g: tree.paths[g]):  # depth-first: siblings together
            path = tree.paths[group]
            added = sum(len(tree.segments[s].tokens) for s in path if s not in members)
            if batch and tokens + added > self.pack_tokens:
                self._run_batch(tree, batch, groups, inputs, continuations, score)
                batch, members, tokens = [], set(), 0
                added = sum(len(tree.segments[s].tokens) for s in path)
            batch.append(group)
            tokens += added
            members.update(path)
        if batch:
            self._run_batch(tree, batch, groups, inputs, continuations, score)

    def _run_batch(self, tree, batch: list[int], groups, inputs, continuations, score) -> None:
        used = sorted({s for group in batch for s in tree.paths[group]})  # ancestors before descendants
        local = {segment: index for index, segment in enumerate(used)}
        segments = [dataclasses.replace(tree.segments[s], parent=None if tree.segments[s].parent is None else local[tree.segments[s].parent]) for s in used]
        wanted: dict[int, set[int]] = {}
        asks = []  # (request index, [(local segment, offset), ...])
        for group in batch:
            for index in groups[group][1]:
                end, length = len(inputs[index]), len(continuations[index])
                places = [(local[segment], offset) for segment, offset in (tree.locate(group, p) for p in range(end - length, end))]
                for segment, offset in places:
                    wanted.setdefault(segment, set()).add(offset)
                asks.append((index, places))
        ordered = {segment: sorted(offsets) for segment, offsets in wanted.items()}
        logits = self.model.run_packed(segments, ordered)
        row_of = {segment: {offset: row for row, offset in enumerate(offsets)} for segment, offsets in ordered.items()}
        for index, places in asks:
            score(index, torch.stack([logits[segment][row_of[segment][offset]] for segment, offset in places]))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, in disjoint windows of ``max_length`` tokens
        (lm-eval's rolling windows, the first one conditioned on the prefix token)."""
        windows, owners = [], []
        for owner, (string,) in enumerate(req.args for req in requests):
            token_windows = utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
            )
            for context, continuation in map(utils.make_disjoint_window, token_windows):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm), strict=True):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, stopped at the first ``until`` string, EOS
        or ``max_gen_toks`` tokens; identical (context, settings) requests run once."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        done: dict[tuple[str, str], str] = {}
        results = []
        for context, gen_kwargs in tqdm([req.args for req in requests], disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests"):
            key = (context, json.dumps(gen_kwargs, sort_keys=True, default=str))
            if key not in done:
                done[key] = self._generate_one(context, gen_kwargs, eos)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), done[key])
            results.append(done[key])
        return results

    def _generate_one(self, context: str, gen_kwargs: dict, eos: str) -> str:
        settings = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(settings.pop("until", None), eos=eos)
        max_gen_toks = settings.pop("max_gen_toks")
        if max_gen_toks >= self.max_length:
            raise EvaluationError(f"max_gen_toks {max_gen_toks} leaves no room for the prompt in max_length {self.max_length}")
        prompt = self.tok_encode(context, left_truncate_len=self.max_length - max_gen_toks)
        generated: list[int] = []
        text = ""
        stream = self.model.generate(
            torch.tensor(prompt, dtype=torch.long), max_gen_toks, temperature=float(settings.get("temperature", 0.0)), stop_token_ids=(self.eot_token_id,)
        )
        for token in stream:
            if int(token) == self.eot_token_id:
                break
            generated.append(int(token))
            text = self.tok_decode(generated)
            if any(stop and stop in text for stop in until):
                break
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text

"""Prompt in, streamed text out: tokenize, prefill, decode, report speeds (``quantkit run``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from quantkit.runtime.bundle import BundleError

__all__ = ["GenerationReport", "generate_text"]


@dataclass
class GenerationReport:
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    bubble_ratio: float
    critical_processor: str
    outlier_values: int
    cold_loads: int
    load_seconds: float = 0.0  # loading the bundle: reading it, compiling or loading every NPU graph
    npu_graphs_from: str = ""  # what the NPU graphs were loaded from, in words

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        # the first new token comes from the prefill logits; the rest from decode steps
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else float("nan")

    @property
    def first_token_seconds(self) -> float:
        """From loading the bundle to the first new token (its prefill)."""
        return self.load_seconds + self.prefill_seconds

    def summary(self) -> str:
        return (
            f"start-up: {self.load_seconds:.2f} s ({self.npu_graphs_from}); first token {self.first_token_seconds:.2f} s after loading began\n"
            f"prefill: {self.prompt_tokens} tokens in {self.prefill_seconds:.2f} s = {self.prefill_tokens_per_s:.1f} tokens/s "
            f"(bubble ratio {self.bubble_ratio:.1%} of the {self.critical_processor.upper()}, {self.outlier_values} outlier values, {self.cold_loads} cold reads)\n"
            f"decode:  {self.new_tokens} tokens, {self.decode_tokens_per_s:.1f} tokens/s"
        )


def generate_text(
    bundle: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    npu: str = "cpu",
    kernels: str = "integer",
    schedule: str = "ooo",
    shadow: bool = True,
    trace: str | Path | None = None,
    stream: TextIO | None = None,
) -> GenerationReport:
    """Generate a continuation of ``prompt`` with the bundle, writing text to ``stream``
    (e.g. ``sys.stdout``) as it comes.

    >>> report = generate_text("bundle", "The capital of France is", max_new_tokens=20)  # doctest: +SKIP
    >>> print(report.summary())                                                           # doctest: +SKIP
    """
    from quantkit.runtime.engine import BundleModel
    from quantkit.runtime.tokenizer import BundleTokenizer

    if not prompt:
        raise BundleError("the prompt is empty; pass --prompt TEXT or --prompt-file F")
    tokenizer = BundleTokenizer(bundle)
    model = BundleModel(bundle, npu=npu, shadow=shadow, schedule=schedule, kernels=kernels)
    ids = tokenizer.encode(prompt)
    stops = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    new_ids: list[int] = []
    printed = 0
    for token in model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_token_ids=stops):
        new_ids.append(token)
        if stream is not None:
            text, printed = tokenizer.stream(new_ids, printed)
            stream.write(text)
            stream.flush()
    if stream is not None:
        stream.write(tokenizer.decode(new_ids)[printed:] + "\n")
    if trace is not None:
        model.last_schedule.write_chrome_trace(trace)
    stats, schedule_run = model.last_generation, model.last_schedule
    return GenerationReport(
        text=tokenizer.decode(new_ids),
        prompt_tokens=stats["prompt_tokens"],
        new_tokens=stats["new_tokens"],
        prefill_seconds=stats["prefill_seconds"],
        decode_seconds=stats["decode_seconds"],
        bubble_ratio=schedule_run.bubble_ratio,
        critical_processor=schedule_run.critical_processor,
        outlier_values=model.counters.outlier_values,
        cold_loads=model.counters.cold_loads,
        load_seconds=model.load_seconds,
        npu_graphs_from=npu_graphs_from(model),
    )


def npu_graphs_from(model) -> str:
    """What the bundle's NPU graphs were loaded from, in words."""
    if model.npu != "qnn":
        return f"{len(model.npu_graph_files)} NPU graphs on ONNX Runtime's CPU provider"
    contexts = model.npu_context_graphs
    if contexts == len(model.npu_graph_files):
        return f"QNN HTP: {contexts} graphs loaded from their context binaries"
    return f"QNN HTP: {len(model.npu_graph_files) - contexts} graphs compiled at start-up" + (f", {contexts} from context binaries" if contexts else "")

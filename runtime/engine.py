"""Execute a bundle: chunked prefill with the NPU graphs in INT8 and the CPU work in FP,
out-of-order across the two processors, then decode (arXiv 2407.05858 §3.2–3.4).

A prompt runs as chunks of the bundle's static size (last chunk zero-padded); chunk i
attends to the KV cache of chunks < i and itself (causal), so the logits equal a
single-pass run. Per NPU Linear input: clip at the calibrated threshold, run the graph
on the clipped part, add the shadow result x_out·W_fp[:, C]ᵀ on the CPU (Eq. 1) — hot
columns resident, cold ones read from the bundle only when an outlier lands there.
Decode runs one token at a time on the CPU with the graphs' own QDQ arithmetic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from quantkit.runtime.architecture import ArchitectureDescription, ArchitectureError
from quantkit.runtime.bundle import BundleError, graph_kind, load_manifest
from quantkit.runtime.npu import OrtGraph, QdqGraph
from quantkit.runtime.packing import ChunkRun, Segment, pack_chunks
from quantkit.runtime.sampling import SamplingConfig, next_token
from quantkit.runtime.scheduler import DurationEstimates, Schedule, run_in_order, run_out_of_order
from quantkit.runtime.sessions import CPU_KERNELS
from quantkit.runtime.shadow import ColdColumns, RuntimeCounters, ShadowSite
from quantkit.runtime.subgraphs import ChunkState, KVCache, ModelParts, chunk_state, chunk_subgraphs

__all__ = ["BundleModel", "RuntimeCounters", "PrefillResult", "SCHEDULES"]

SCHEDULES = ("ooo", "inorder")


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [T, vocab], or [1, vocab] with logits="last"
    cache: KVCache
    schedule: Schedule
    seconds: float


class BundleModel:
    """A loaded bundle. ``npu="cpu"`` runs the graphs with ONNX Runtime's CPU provider,
    ``npu="qnn"`` on the QNN HTP backend (CPU fallback disabled). ``shadow=False`` drops
    the shadow path (outliers are clipped), for comparison. ``schedule`` is "ooo"
    (out-of-order on an NPU worker and a CPU worker, §3.4) or "inorder".
    With ``npu="qnn"`` a bundle exported with ``--qnn-context`` runs its compiled EPContext
    models; ``qnn_contexts=False`` compiles its QDQ graphs for the same target instead.
    ``npu_threads``: ONNX Runtime threads per graph with ``npu="cpu"`` (the emulated NPU's
    cores; 1 = the NPU worker's own thread). ``cpu_threads``: torch threads while the
    runtime computes (the CPU worker's cores) — multi-threaded small ops on a busy machine
    wait on each other's barriers, so one thread each is the default. ``kernels`` (with
    ``npu="cpu"``): "integer" runs the A8 graphs on int8 GEMMs as the NPU does, "qdq"
    every graph as written (``quantkit.runtime.npu``).

    >>> model = BundleModel("bundle")                                   # doctest: +SKIP
    >>> logits = model.prefill(token_ids)                               # doctest: +SKIP
    >>> for token in model.generate(token_ids, max_new_tokens=20): ...  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: str | Path,
        npu: str = "cpu",
        shadow: bool = True,
        schedule: str = "ooo",
        npu_threads: int = 1,
        cpu_threads: int = 1,
        qnn_contexts: bool = True,
        kernels: str = "integer",
    ):
        started = time.perf_counter()
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        try:
            self.arch = ArchitectureDescription.from_dict(self.manifest["architecture"])
        except ArchitectureError as error:
            raise BundleError(f"{self.folder}: {error}") from None
        if npu not in ("cpu", "qnn"):
            raise BundleError(f"npu: got {npu!r}, expected 'cpu' (ONNX Runtime CPU provider) or 'qnn' (QNN HTP)")
        if kernels not in CPU_KERNELS:
            raise BundleError(f"kernels: got {kernels!r}, expected one of {', '.join(CPU_KERNELS)}")
        if schedule not in SCHEDULES:
            raise BundleError(f"schedule: got {schedule!r}, expected one of {', '.join(SCHEDULES)}")
        from safetensors.torch import load_file

        self.chunk_size = self.manifest["chunk_size"]
        self.context_length = self.manifest["context_length"]
        self.activation_bits = self.manifest["quantization"]["activation_bits"]  # 8, 16 or "mixed" (per graph in the manifest)
        self.placement = self.manifest["placement"]
        self.shadow = shadow
        self.schedule = schedule
        self.counters = RuntimeCounters()
        self.estimates = DurationEstimates()  # T(·) of the greedy score, refined every run
        self.last_schedule: Schedule | None = None
        self.last_generation: dict | None = None  # prompt/new tokens and seconds of the last generate()
        plan = json.loads((self.folder / self.manifest["shadow"]["plan"]).read_text())
        self.sink_tokens = int(plan["config"].get("sink_tokens", 0))  # positions run whole in FP on the CPU (runtime/shadow.py)
        hot = load_file(str(self.folder / self.manifest["shadow"]["resident"]))
        cold = ColdColumns(self.folder / self.manifest["shadow"]["cold"])
        self.cpu = load_file(str(self.folder / "cpu.safetensors"))
        sites = {}
        for site in plan["sites"].values():
            key = (site["block_index"], graph_kind(site["linear_names"][0]))
            if self.placement[key[0]] == "npu":
                sites[key] = ShadowSite(site, hot, cold, self.counters, enabled=shadow, sink_tokens=self.sink_tokens)
        self._graph_entries = {(g["block"], graph_kind(g["linears"][0])): g for g in self.manifest["graphs"]}
        target = self.manifest.get("qnn_target")
        npu_graphs = {key: OrtGraph(self.folder, entry, npu, npu_threads, kernels, target, qnn_contexts) for key, entry in self._graph_entries.items()}
        self.npu = npu
        self.npu_graph_files = {graph.entry["name"]: graph.source for graph in npu_graphs.values()}  # the file each NPU graph was loaded from
        self.npu_context_graphs = sum(graph.from_context for graph in npu_graphs.values())  # loaded from a compiled QNN context binary
        self.integer_graphs = sum(graph.integer for graph in npu_graphs.values())  # run on int8 GEMMs (npu="cpu", kernels="integer")
        self._parts = ModelParts(self.arch, self.cpu, self.placement, sites, npu_graphs, self._count_npu_run, self.chunk_size)
        self._decode_parts: ModelParts | None = None
        self.cpu_threads = cpu_threads
        self.load_seconds = time.perf_counter() - started  # with npu="qnn": every graph compiled or loaded from its context binary

    @contextmanager
    def _torch_threads(self):
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _count_npu_run(self) -> None:
        self.counters.npu_runs += 1

    # -- prefill ------------------------------------------------------------------------
    def _check_prompt(self, input_ids) -> torch.Tensor:
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        if input_ids.numel() == 0:
            raise BundleError("the prompt is empty")
        if input_ids.numel() > self.context_length:
            raise BundleError(f"the prompt has {input_ids.numel()} tokens; this bundle's context is {self.context_length} — shorten the prompt")
        vocab = self.cpu[self.arch.embed_weight].shape[0]
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise BundleError(
                f"token ids must lie in [0, {vocab}); got {int(input_ids.min())}..{int(input_ids.max())} — was the prompt tokenized with another model's tokenizer?"
            )
        return input_ids

    def _run(self, states: list[ChunkState], cache: KVCache, schedule: str | None, logits: list[bool]) -> tuple[Schedule, float]:
        schedule = schedule or self.schedule
        if schedule not in SCHEDULES:
            raise BundleError(f"schedule: got {schedule!r}, expected one of {', '.join(SCHEDULES)}")
        tasks, last_attention = [], {}
        for chunk, (state, wanted) in enumerate(zip(states, logits)):
            chunk_subgraphs(self._parts, state, cache, chunk, last_attention, tasks, wanted)
        runner = run_out_of_order if schedule == "ooo" else run_in_order
        with self._torch_threads():
            began = time.perf_counter()
            self.last_schedule = runner(tasks, self.estimates)
            seconds = time.perf_counter() - began
        return self.last_schedule, seconds

    def _new_cache(self, parents: dict[int, int | None] | None = None) -> KVCache:
        return KVCache(self.arch.num_blocks, [layer.window for layer in self.arch.layers], parents)

    @torch.no_grad()
    def run_prefill(self, input_ids, logits: str = "all", schedule: str | None = None) -> PrefillResult:
        """Chunked prefill; ``logits`` "all" ([T, vocab]) or "last" ([1, vocab])."""
        input_ids = self._check_prompt(input_ids)
        if logits not in ("all", "last"):
            raise BundleError(f"logits: got {logits!r}, expected 'all' or 'last'")
        starts = list(range(0, input_ids.numel(), self.chunk_size))
        states = []
        for start in starts:
            ids = input_ids[start : start + self.chunk_size]
            last_row = torch.tensor([ids.numel() - 1]) if logits == "last" else None
            states.append(chunk_state(self.arch, ids, torch.arange(start, start + ids.numel()), [ChunkRun(0, 0, ids.numel(), start)], last_row))
        cache = self._new_cache()
        schedule, seconds = self._run(states, cache, schedule, [logits == "all" or chunk == len(starts) - 1 for chunk in range(len(starts))])
        result = torch.cat([s.logits for s in states if s.logits is not None])
        return PrefillResult(result, cache, schedule, seconds)

    @torch.no_grad()
    def run_packed(self, segments: list[Segment], wanted: dict[int, list[int]], schedule: str | None = None) -> dict[int, torch.Tensor]:
        """Several sequences (and continuations sharing a parent's prefix, runtime/packing.py)
        in one packed prefill: chunks of the bundle's static size hold tokens of several
        segments, attention keeps each to its own context. Returns, per segment in
        ``wanted``, the logits [len(offsets), vocab] at those offsets (only those rows run
        through the LM head)."""
        for index, segment in enumerate(segments):
            if segment.end > self.context_length:
                raise BundleError(f"segment {index} ends at position {segment.end}; this bundle's context is {self.context_length}")
            self._check_prompt(segment.tokens)
        chunks = pack_chunks(segments, self.chunk_size)
        where = {}  # (segment, offset) → (chunk, row)
        for chunk_index, chunk in enumerate(chunks):
            for run in chunk.runs:
                for row in range(run.begin, run.end):
                    where[(run.segment, run.offset + row - run.begin)] = (chunk_index, row)
        rows_of = [[] for _ in chunks]
        for segment, offsets in wanted.items():
            for offset in offsets:
                chunk_index, row = where[(segment, offset)]
                rows_of[chunk_index].append(row)
        rows_of = [sorted(set(rows)) for rows in rows_of]
        states = [
            chunk_state(self.arch, c.ids, torch.tensor(c.positions), c.runs, torch.tensor(rows, dtype=torch.long), c.released)
            for c, rows in zip(chunks, rows_of)
        ]
        cache = self._new_cache({index: segment.parent for index, segment in enumerate(segments)})
        self._run(states, cache, schedule, [bool(rows) for rows in rows_of])
        result = {}
        for segment, offsets in wanted.items():
            picked = []
            for offset in offsets:
                chunk_index, row = where[(segment, offset)]
                picked.append(states[chunk_index].logits[rows_of[chunk_index].index(row)])
            result[segment] = torch.stack(picked) if picked else torch.empty(0, self.arch.vocab_size)
        return result

    def prefill(self, input_ids) -> torch.Tensor:
        """Logits [T, vocab] of a 1-D prompt, computed chunk by chunk."""
        return self.run_prefill(input_ids, logits="all").logits

    # -- decode -------------------------------------------------------------------------
    def _decode_model(self) -> ModelParts:
        if self._decode_parts is None:
            graphs = {key: QdqGraph(self.folder, entry) for key, entry in self._graph_entries.items()}
            self._decode_parts = ModelParts(self.arch, self.cpu, self.placement, self._parts.sites, graphs, lambda: None, chunk_size=None)
        return self._decode_parts

    @torch.no_grad()
    def decode_step(self, token: int, cache: KVCache) -> torch.Tensor:
        """Logits [vocab] after appending one token at position ``cache.length``."""
        position = cache.length
        if position >= self.context_length:
            raise BundleError(f"the context is full ({self.context_length} tokens); generate fewer tokens or shorten the prompt")
        state = chunk_state(self.arch, [token], torch.tensor([position]), [ChunkRun(0, 0, 1, position)])
        tasks = []
        chunk_subgraphs(self._decode_model(), state, cache, 0, {}, tasks)
        with self._torch_threads():
            run_in_order(tasks)
        return state.logits[-1]

    def generate(
        self, input_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_token_ids=()
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` new token ids (greedy when temperature is 0),
        stopping after a token in ``stop_token_ids``. Timings land in ``self.last_generation``."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: got {max_new_tokens}, expected ≥ 0")
        config = SamplingConfig(temperature, top_k, top_p, seed)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        prefill = self.run_prefill(input_ids, logits="last")
        self.last_generation = {
            "prompt_tokens": int(torch.as_tensor(input_ids).numel()),
            "prefill_seconds": prefill.seconds,
            "new_tokens": 0,
            "decode_seconds": 0.0,
        }
        if max_new_tokens == 0:
            return
        logits, cache, stops = prefill.logits[-1], prefill.cache, set(stop_token_ids)
        for produced in range(max_new_tokens):
            token = next_token(logits, config, generator)
            self.last_generation["new_tokens"] = produced + 1
            yield token
            if token in stops or produced + 1 == max_new_tokens:
                return
            began = time.perf_counter()
            logits = self.decode_step(token, cache)
            self.last_generation["decode_seconds"] += time.perf_counter() - began

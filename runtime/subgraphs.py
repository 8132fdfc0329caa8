"""The subgraphs G[c, k] of one prefill chunk (arXiv 2407.05858 §3.4), as scheduler tasks.

Per decoder block placed on the NPU (graph boundaries as in the bundle, docs/bundle-format.md; the
block's steps — norms, q/k norms, RoPE table, window, activation — come from the bundle's
architecture description, ``architecture.ArchitectureDescription``):

    CPU  attn_in     h += previous down output; x = N_pre_attn(h); split x (Eq. 1)
    NPU  qkv         ║ CPU qkv_shadow   (the NPU graph and the shadow product in parallel)
    CPU  attention   q,k,v = NPU + shadow; q/k norms; RoPE; append to the KV cache;
                     causal (windowed) attention; split
    NPU  o           ║ CPU o_shadow
    CPU  mlp_in      h += N_post_attn(o); x = N_pre_mlp(h); split
    NPU  gate_up     ║ CPU gate_up_shadow
    CPU  act         act(gate) · up; split
    NPU  down        ║ CPU down_shadow

A block placed on the CPU is one CPU subgraph computing the same steps in FP. The chunk
ends with the final norm and the LM head. Edges: program order within the chunk, and
attention(c, b) after attention(c−1, b) — it reads the KV cache the earlier chunk appended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from quantkit.runtime.architecture import ArchitectureDescription, Norm
from quantkit.runtime.cpu_ops import ROW_TILE, activation, apply_rope, causal_attention, linear, rms_norm, rope_cos_sin, softcap
from quantkit.runtime.packing import ChunkRun
from quantkit.runtime.scheduler import CPU, NPU, Subgraph
from quantkit.runtime.shadow import ShadowSite, combine

__all__ = ["KVCache", "ChunkState", "ModelParts", "chunk_state", "chunk_subgraphs"]


class KVCache:
    """Keys/values [kv_heads, positions, head_dim] per block and segment (runtime/packing.py:
    a sequence, or a continuation of a parent segment), appended chunk by chunk. A query of
    a segment sees its ancestors' keys and its own. A block with an attention window W
    keeps only each segment's last W − 1 positions between steps: no later query sees
    further back (the phone's memory for a local layer stays bounded)."""

    def __init__(self, num_blocks: int, windows: list[int | None] | None = None, parents: dict[int, int | None] | None = None):
        self.keys: list[dict[int, torch.Tensor]] = [{} for _ in range(num_blocks)]
        self.values: list[dict[int, torch.Tensor]] = [{} for _ in range(num_blocks)]
        self.first_position: list[dict[int, int]] = [{} for _ in range(num_blocks)]  # of each segment's first cached key
        self.windows = windows or [None] * num_blocks
        self.parents = parents or {}
        self._ends: dict[int, int] = {}  # position after each segment's last token

    def append(self, block: int, segment: int, k: torch.Tensor, v: torch.Tensor, position: int) -> None:
        """Add keys/values of ``segment`` whose first row is at ``position``."""
        if block == 0:
            self._ends[segment] = position + k.shape[1]
        if segment in self.keys[block]:
            k, v = torch.cat([self.keys[block][segment], k], dim=1), torch.cat([self.values[block][segment], v], dim=1)
        else:
            self.first_position[block][segment] = position
        self.keys[block][segment], self.values[block][segment] = k, v

    def context(self, block: int, segment: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and their positions that a query of ``segment`` may see: its
        ancestors' (root first) and its own."""
        chain = [segment]
        while self.parents.get(chain[-1]) is not None:
            chain.append(self.parents[chain[-1]])
        chain = [s for s in reversed(chain) if s in self.keys[block]]
        positions = [torch.arange(self.first_position[block][s], self.first_position[block][s] + self.keys[block][s].shape[1]) for s in chain]
        if len(chain) == 1:
            return self.keys[block][segment], self.values[block][segment], positions[0]
        return torch.cat([self.keys[block][s] for s in chain], dim=1), torch.cat([self.values[block][s] for s in chain], dim=1), torch.cat(positions)

    def trim(self, block: int, segment: int) -> None:
        """Drop the keys of ``segment`` no later query of a windowed block can see."""
        window = self.windows[block]
        if window is None or self.keys[block][segment].shape[1] <= window - 1:
            return
        dropped = self.keys[block][segment].shape[1] - (window - 1)
        self.keys[block][segment], self.values[block][segment] = self.keys[block][segment][:, dropped:], self.values[block][segment][:, dropped:]
        self.first_position[block][segment] += dropped

    def release(self, block: int, segments) -> None:
        """Forget segments no later chunk reads (their own queries and their children's are done)."""
        for segment in segments:
            self.keys[block].pop(segment, None)
            self.values[block].pop(segment, None)
            self.first_position[block].pop(segment, None)

    def end(self, segment: int = 0) -> int:
        """The position after ``segment``'s last token (the next token's position)."""
        return self._ends.get(segment, 0)

    @property
    def length(self) -> int:
        """Positions of sequence 0 so far (the single sequence of ``prefill``/``generate``)."""
        return self.end(0)


@dataclass
class ChunkState:
    """The values one chunk's subgraphs hand each other. ``runs`` say which rows belong to
    which segment (one run: a plain prompt chunk); ``logit_rows`` which rows' logits are
    wanted (None: every row); ``released`` the segments whose keys are dropped after it."""

    ids: torch.Tensor
    positions: torch.Tensor
    runs: list[ChunkRun]
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]  # RoPE table name → cos, sin at the rows' positions
    logit_rows: torch.Tensor | None = None
    released: tuple[int, ...] = ()
    h: torch.Tensor | None = None
    pending: torch.Tensor | None = None  # last down output, added at the next residual
    clipped: torch.Tensor | None = None
    excess: torch.Tensor | None = None
    npu_out: list[torch.Tensor] = field(default_factory=list)
    shadow_out: list[torch.Tensor] | None = None
    output_out: list | None = None  # output-side shadow: per Linear (channels, FP values) or None
    logits: torch.Tensor | None = None


def chunk_state(
    arch: ArchitectureDescription, ids, positions: torch.Tensor, runs: list[ChunkRun], logit_rows: torch.Tensor | None = None, released=()
) -> ChunkState:
    """A chunk's state, with cos, sin of every RoPE table of ``arch`` at its positions."""
    rope = {name: rope_cos_sin(positions, table) for name, table in arch.ropes.items()}
    return ChunkState(torch.as_tensor(ids, dtype=torch.long), positions, runs, rope, logit_rows, tuple(released))


@dataclass
class ModelParts:
    """What the subgraphs compute with (filled by the engine from the bundle)."""

    arch: ArchitectureDescription
    cpu: dict[str, torch.Tensor]
    placement: list[str]
    sites: dict[tuple[int, str], ShadowSite]  # (block, kind) → shadow site
    npu: dict[tuple[int, str], Callable[[torch.Tensor], list[torch.Tensor]]]  # (block, kind) → graph
    count_npu_run: Callable[[], None]
    # The bundle's static chunk: prefill attention runs at the shapes of one chunked prefill
    # (so packed == unpacked bit for bit). None: at the natural shapes (decode, one token
    # at a time, has no chunked twin to match and would pay a whole chunk of queries).
    chunk_size: int | None = 256


def chunk_subgraphs(
    parts: ModelParts, state: ChunkState, cache: KVCache, chunk: int, last_attention: dict[int, int], tasks: list[Subgraph], logits: bool = True
) -> None:
    """Append the subgraphs of one chunk to ``tasks``. ``last_attention[b]`` is the index of
    the previous chunk's attention subgraph of block b (updated here). ``logits``: whether
    the chunk ends with the LM head (for ``state.logit_rows``)."""
    arch = parts.arch
    heads, kv_heads, head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
    chunk_size = parts.chunk_size

    def add(name: str, processor: str, run: Callable[[], None], deps: list[int], kind: str, block: int | None = None) -> int:
        tasks.append(Subgraph(f"c{chunk}.{name}", processor, run, tuple(deps), kind, {"chunk": chunk, "block": block}))
        return len(tasks) - 1

    def norm(x: torch.Tensor, spec: Norm | None, block: int | None = None) -> torch.Tensor:
        if spec is None:
            return x
        weight = parts.cpu[spec.weight if block is None else arch.block_tensor(block, spec.weight)]
        return rms_norm(x, weight, spec.eps, spec.offset)

    def residual() -> torch.Tensor:
        if state.pending is not None:
            state.h = state.h + state.pending
            state.pending = None
        return state.h

    def embed() -> None:
        state.h = parts.cpu[arch.embed_weight][state.ids]
        if arch.embed_scale != 1.0:  # Gemma: √hidden, in the weights' dtype as transformers does
            state.h = state.h * torch.tensor(arch.embed_scale, dtype=state.h.dtype)

    previous = [add("embed", CPU, embed, [], "embed")]

    def split_for(block: int, kind: str, x: torch.Tensor) -> None:
        state.clipped, state.excess = parts.sites[(block, kind)].split(x, state.positions)

    def npu_site(block: int, kind: str, deps: list[int]) -> list[int]:
        """The NPU graph and, beside it, the shadow product; returns the indices to wait for."""
        site = parts.sites[(block, kind)]

        def run_graph() -> None:
            state.npu_out = parts.npu[(block, kind)](state.clipped)
            parts.count_npu_run()

        waits = [add(f"b{block}.{kind}", NPU, run_graph, deps, kind, block)]
        if site.shadowed or site.has_output_channels:

            def run_shadow() -> None:
                state.shadow_out = site.outlier_products(state.excess, state.positions) if site.shadowed else None
                state.output_out = site.output_products(state.clipped) if site.has_output_channels else None

            waits.append(add(f"b{block}.{kind}_shadow", CPU, run_shadow, deps, f"{kind}_shadow", block))
        return waits

    def site_outputs(kind: str) -> list[torch.Tensor]:
        """The site's outputs (NPU + shadow), split into its parts (q, k, v / gate, up)."""
        count = len(state.npu_out)
        output_parts = state.output_out if state.output_out is not None else [None] * count  # output-side shadow channels, computed in FP
        outlier_parts = state.shadow_out if state.shadow_out is not None else [None] * count  # the CPU shadow part
        outputs = [combine(y, output, outlier) for y, output, outlier in zip(state.npu_out, output_parts, outlier_parts)]  # Eq. 1
        state.npu_out, state.shadow_out, state.output_out, state.clipped, state.excess = [], None, None, None, None
        return arch.split_outputs(kind, outputs)

    def fp_site(block: int, kind: str, x: torch.Tensor) -> list[torch.Tensor]:
        """A CPU-FP block's site: its Linears in FP, split into parts like an NPU site."""
        return arch.split_outputs(kind, [_fp_linear(parts.cpu, arch.block_tensor(block, name), x) for name in arch.linears[kind]])

    def attend(block: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        length, layer = q.shape[0], arch.layers[block]
        q = norm(q.view(length, heads, head_dim), arch.q_norm, block).transpose(0, 1)
        k = norm(k.view(length, kv_heads, head_dim), arch.k_norm, block).transpose(0, 1)
        cos, sin = state.rope[layer.rope]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.view(length, kv_heads, head_dim).transpose(0, 1)
        outputs = []
        for run in state.runs:  # each segment's rows see only its own context
            rows = slice(run.begin, run.end)
            cache.append(block, run.segment, k[:, rows], v[:, rows], int(state.positions[run.begin]))
            keys, values, key_positions = cache.context(block, run.segment)
            if chunk_size is None:
                outputs.append(
                    causal_attention(
                        q[:, rows],
                        keys,
                        values,
                        state.positions[rows],
                        key_positions,
                        scale=arch.attention_scale,
                        window=layer.window,
                        logit_softcap=arch.attention_softcap,
                    )
                )
                continue
            for begin, end in _key_span_groups(int(state.positions[run.begin]), run.end - run.begin, chunk_size):
                outputs.append(
                    _attention_at_canonical_length(
                        q[:, run.begin + begin : run.begin + end],
                        keys,
                        values,
                        state.positions[run.begin + begin : run.begin + end],
                        key_positions,
                        chunk_size,
                        arch,
                        layer,
                    )
                )
            cache.trim(block, run.segment)
        cache.release(block, state.released)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out.transpose(0, 1).reshape(length, heads * head_dim)

    for block in range(arch.num_blocks):
        if parts.placement[block] != "npu":

            def cpu_block(block=block) -> None:
                h = residual()
                q, k, v = fp_site(block, "qkv", norm(h, arch.pre_attention_norm, block))
                (o,) = fp_site(block, "o", attend(block, q, k, v))
                h = h + norm(o, arch.post_attention_norm, block)
                gate, up = fp_site(block, "gate_up", norm(h, arch.pre_mlp_norm, block))
                (down,) = fp_site(block, "down", activation(arch.activation, gate) * up)
                state.h = h + norm(down, arch.post_mlp_norm, block)

            deps = previous + ([last_attention[block]] if block in last_attention else [])
            index = add(f"b{block}.cpu_block", CPU, cpu_block, deps, "cpu_block", block)
            last_attention[block] = index
            previous = [index]
            continue

        def attn_in(block=block) -> None:
            split_for(block, "qkv", norm(residual(), arch.pre_attention_norm, block))

        previous = npu_site(block, "qkv", [add(f"b{block}.attn_in", CPU, attn_in, previous, "attn_in", block)])

        def attention(block=block) -> None:
            q, k, v = site_outputs("qkv")
            split_for(block, "o", attend(block, q, k, v))

        deps = previous + ([last_attention[block]] if block in last_attention else [])
        index = add(f"b{block}.attention", CPU, attention, deps, "attention", block)
        last_attention[block] = index
        previous = npu_site(block, "o", [index])

        def mlp_in(block=block) -> None:
            (o,) = site_outputs("o")
            state.h = state.h + norm(o, arch.post_attention_norm, block)
            split_for(block, "gate_up", norm(state.h, arch.pre_mlp_norm, block))

        previous = npu_site(block, "gate_up", [add(f"b{block}.mlp_in", CPU, mlp_in, previous, "mlp_in", block)])

        def act(block=block) -> None:
            gate, up = site_outputs("gate_up")
            split_for(block, "down", activation(arch.activation, gate) * up)

        previous = npu_site(block, "down", [add(f"b{block}.act", CPU, act, previous, "act", block)])

        def down_out(block=block) -> None:
            (down,) = site_outputs("down")
            state.pending = norm(down, arch.post_mlp_norm, block)

        previous = [add(f"b{block}.down_out", CPU, down_out, previous, "down_out", block)]

    def head() -> None:
        h = residual()
        if state.logit_rows is not None:  # only the rows asked for: the LM head is the largest matmul
            h = h[state.logit_rows]
        h = norm(h, arch.final_norm)
        state.logits = softcap(linear(h, parts.cpu[arch.lm_head_weight]), arch.final_logit_softcap)

    if logits:
        add("head", CPU, head, previous, "head")


def _key_span_groups(first_position: int, length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Rows [begin, end) of one run — ``length`` consecutive positions from
    ``first_position`` — whose positions lie in the same window of ``chunk_size`` positions
    (0..C−1, C..2C−1, …): the rows an unpacked prefill computes in one chunk.

    >>> _key_span_groups(60, 10, 64)
    [(0, 4), (4, 10)]
    """
    first_edge = -first_position % chunk_size or chunk_size
    edges = [0, *range(first_edge, length, chunk_size), length]
    return list(zip(edges[:-1], edges[1:]))


def _attention_at_canonical_length(q, keys, values, query_positions, key_positions, chunk_size: int, arch: ArchitectureDescription, layer) -> torch.Tensor:
    """Attention of queries at positions in [mC, (m+1)C), computed as a whole chunk: the
    queries placed at rows p − mC of a C-row block (the other rows are filler, dropped),
    the keys padded (masked) to end at (m+1)C. These are exactly the shapes of an unpacked
    chunked prefill, so a packed or prefix-shared query is computed bit for bit as in one
    prefill per request: scaled_dot_product_attention blocks its work by the query and
    key lengths (measured: the same query row gives other float roundings in a 5-row and
    a 35-row call), while masked keys add exact zeros. Of the C-row block only the rows
    from the first to the last query, widened to multiples of ``ROW_TILE``, are computed:
    each query row of the kernel is computed on its own within such aligned row tiles
    (tests/runtime/test_cpu_ops.py), and a short run no longer pays for C queries."""
    base = int(query_positions[0]) // chunk_size * chunk_size
    span_end = base + chunk_size
    if int(key_positions[-1]) >= span_end:  # keys of the run's later span: not there yet in a chunked prefill
        keep = int((key_positions < span_end).sum())
        keys, values, key_positions = keys[:, :keep], values[:, :keep], key_positions[:keep]
    missing = span_end - int(key_positions[-1]) - 1
    if missing > 0:
        pad = keys.new_zeros(keys.shape[0], missing, keys.shape[2])
        keys, values = torch.cat([keys, pad], dim=1), torch.cat([values, pad], dim=1)
        key_positions = torch.cat([key_positions, torch.arange(int(key_positions[-1]) + 1, span_end)])
    first = int(query_positions[0]) - base
    top, bottom = first // ROW_TILE * ROW_TILE, min(chunk_size, -(-(first + q.shape[1]) // ROW_TILE) * ROW_TILE)
    rows = query_positions - base - top
    block = q.new_zeros(q.shape[0], bottom - top, q.shape[2])
    block[:, rows] = q
    out = causal_attention(
        block,
        keys,
        values,
        torch.arange(base + top, base + bottom),
        key_positions,
        scale=arch.attention_scale,
        window=layer.window,
        logit_softcap=arch.attention_softcap,
    )
    return out[:, rows]


def _fp_linear(cpu: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return linear(x, cpu[f"{name}.weight"], cpu.get(f"{name}.bias"))

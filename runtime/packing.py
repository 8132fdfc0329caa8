"""Several sequences in one stream of static chunks, and shared prefixes computed once.

The NPU graphs are per-token Linears and the shadow path is per token too, so tokens of
different sequences can share one static chunk at no extra NPU cost; only attention must
keep them apart. A *segment* is a run of tokens that continues its *parent* segment
(None: a sequence of its own): its first token sits at the position after the parent's
last, and its queries see the parent's (and the parent's ancestors') keys and its own
earlier keys — never another branch's. Requests that share a context (multiple-choice
options, several continuations of one prompt) become one parent segment, computed once,
and one child segment per continuation: the general prefix cache.

:func:`prefix_tree` builds those segments from token sequences (a radix tree: one
segment per edge, split where sequences diverge); :func:`pack_chunks` lays segments out
in a stream (parents before children) cut into chunks of the bundle's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Segment", "ChunkRun", "PackedChunk", "PrefixTree", "prefix_tree", "pack_chunks"]


@dataclass(frozen=True)
class Segment:
    tokens: tuple[int, ...]
    parent: int | None = None  # index of the segment this one continues
    start: int = 0  # position of its first token (the parent's end)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass(frozen=True)
class ChunkRun:
    """Rows [begin, end) of a chunk hold tokens [offset, offset + end − begin) of a segment."""

    segment: int
    begin: int
    end: int
    offset: int


@dataclass
class PackedChunk:
    runs: list[ChunkRun]
    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # segments no later chunk needs: their keys are dropped after this one


def pack_chunks(segments: list[Segment], chunk_size: int) -> list[PackedChunk]:
    """The stream of ``segments`` in their order (each parent must precede its children),
    cut every ``chunk_size`` tokens; the last chunk may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: got {chunk_size}, expected ≥ 1")
    for index, segment in enumerate(segments):
        if segment.parent is not None and not 0 <= segment.parent < index:
            raise ValueError(f"segment {index}: its parent {segment.parent} must come before it")
        if not segment.tokens:
            raise ValueError(f"segment {index} has no tokens")
    chunks: list[PackedChunk] = []
    last_chunk_of = [0] * len(segments)  # the last chunk holding a segment or any of its descendants
    for index, segment in enumerate(segments):
        offset = 0
        while offset < len(segment.tokens):
            if not chunks or len(chunks[-1].ids) == chunk_size:
                chunks.append(PackedChunk(runs=[]))
            chunk = chunks[-1]
            take = min(chunk_size - len(chunk.ids), len(segment.tokens) - offset)
            begin = len(chunk.ids)
            chunk.runs.append(ChunkRun(index, begin, begin + take, offset))
            chunk.ids.extend(segment.tokens[offset : offset + take])
            chunk.positions.extend(range(segment.start + offset, segment.start + offset + take))
            offset += take
        last_chunk_of[index] = len(chunks) - 1
    for index in reversed(range(len(segments))):  # children come later: fold them into their ancestors
        parent = segments[index].parent
        if parent is not None:
            last_chunk_of[parent] = max(last_chunk_of[parent], last_chunk_of[index])
    for index, chunk_index in enumerate(last_chunk_of):
        chunks[chunk_index].released.append(index)
    return chunks


@dataclass
class PrefixTree:
    """Segments of a set of sequences and, per sequence, where each of its positions is."""

    segments: list[Segment]
    paths: list[list[int]]  # per sequence: its segments, root first

    def locate(self, sequence: int, position: int) -> tuple[int, int]:
        """(segment, offset in it) of ``position`` of sequence ``sequence``."""
        for segment in self.paths[sequence]:
            if position < self.segments[segment].end:
                return segment, position - self.segments[segment].start
        raise IndexError(f"sequence {sequence} has no position {position}")


def prefix_tree(sequences: list[tuple[int, ...]]) -> PrefixTree:
    """A radix tree of ``sequences`` as segments, depth-first (parents first): one segment
    per stretch of tokens the same set of sequences shares; a sequence that is a prefix of
    another ends inside the other's segment.

    >>> tree = prefix_tree([(1, 2, 3), (1, 2, 4, 5), (6,)])
    >>> [(s.tokens, s.parent, s.start) for s in tree.segments]
    [((1, 2), None, 0), ((3,), 0, 2), ((4, 5), 0, 2), ((6,), None, 0)]
    >>> tree.paths
    [[0, 1], [0, 2], [3]]
    """
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    segments: list[Segment] = []
    paths: list[list[int]] = [[] for _ in sequences]

    def build(members: list[int], depth: int, parent: int | None, start: int) -> None:
        # members: sequences that agree on their first `depth` tokens and have more
        by_token: dict[int, list[int]] = {}
        for member in members:
            by_token.setdefault(sequences[member][depth], []).append(member)
        for group in by_token.values():
            end = depth + 1  # extend while every sequence of the group that goes on agrees
            while True:
                continuing = [m for m in group if len(sequences[m]) > end]
                if not continuing or len({sequences[m][end] for m in continuing}) != 1:
                    break
                end += 1
            index = len(segments)
            longest = max(group, key=lambda m: len(sequences[m]))
            segments.append(Segment(tuple(sequences[longest][depth:end]), parent, start))
            for member in group:
                paths[member].append(index)
            rest = [m for m in group if len(sequences[m]) > end]
            if rest:
                build(rest, end, index, start + end - depth)

    build(list(range(len(sequences))), 0, None, 0)
    return PrefixTree(segments, paths)

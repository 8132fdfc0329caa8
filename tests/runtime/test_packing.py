"""Prefix trees and packed chunks (runtime/packing.py): structure only; the bit-for-bit
equality of packed logits with one prefill per request is in test_engine.py."""

import random

import pytest
from quantkit.runtime.packing import Segment, pack_chunks, prefix_tree


def _random_sequences(seed: int, count: int = 40) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    contexts = [tuple(rng.randrange(9) for _ in range(rng.randrange(1, 12))) for _ in range(6)]
    return [rng.choice(contexts) + tuple(rng.randrange(9) for _ in range(rng.randrange(0, 6))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(5))
def test_every_position_of_every_sequence_is_found_in_its_segments(seed):
    sequences = _random_sequences(seed)
    tree = prefix_tree(sequences)
    for index, sequence in enumerate(sequences):
        path = tree.paths[index]
        assert tree.segments[path[0]].parent is None and all(tree.segments[b].parent == a for a, b in zip(path, path[1:]))
        for position, token in enumerate(sequence):
            segment, offset = tree.locate(index, position)
            assert tree.segments[segment].tokens[offset] == token and tree.segments[segment].start + offset == position
    # shared prefixes are stored once: fewer tokens than the sequences hold
    assert sum(len(s.tokens) for s in tree.segments) < sum(map(len, sequences))
    assert all(s.parent is None or s.parent < i for i, s in enumerate(tree.segments))  # parents first


def test_pack_chunks_fills_chunks_and_releases_a_segment_after_its_last_descendant():
    segments = [Segment((1, 2, 3)), Segment((4, 5), parent=0, start=3), Segment((6,)), Segment((7, 8, 9, 10), parent=0, start=3)]
    chunks = pack_chunks(segments, 4)
    assert [c.ids for c in chunks] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [c.positions for c in chunks] == [[0, 1, 2, 3], [4, 0, 3, 4], [5, 6]]
    assert [sorted(c.released) for c in chunks] == [[], [1, 2], [0, 3]]  # segment 0 serves segment 3 to the end
    with pytest.raises(ValueError, match="parent 2 must come before"):
        pack_chunks([Segment((1,)), Segment((2,), parent=2, start=1), Segment((3,))], 4)

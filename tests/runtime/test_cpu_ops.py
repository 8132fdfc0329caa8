"""The CPU ops the packed prefill's bit-exactness rests on."""

import pytest
import torch
from quantkit.runtime.cpu_ops import ROW_TILE, causal_attention


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("chunk", [64, 128, 256])
def test_attention_rows_in_aligned_row_tiles_equal_the_whole_chunks_rows(chunk, softcap):
    """Packed attention computes only the ROW_TILE-aligned rows of a chunk that hold a
    run's queries (runtime/subgraphs.py): each row must come out bit for bit as in the
    whole chunk's call, for every span of the chunk and key lengths of several chunks —
    through scaled_dot_product_attention and through the written-out soft-capped path."""
    generator = torch.Generator().manual_seed(chunk)
    for span in range(3):
        base, end = span * chunk, (span + 1) * chunk
        q = torch.randn(9, chunk, 64, generator=generator)
        keys, values = torch.randn(3, end, 64, generator=generator), torch.randn(3, end, 64, generator=generator)
        whole = causal_attention(q, keys, values, torch.arange(base, end), torch.arange(end), scale=0.125, logit_softcap=softcap)
        for top in range(0, chunk, ROW_TILE):
            for bottom in range(top + ROW_TILE, chunk + 1, 3 * ROW_TILE):
                part = causal_attention(
                    q[:, top:bottom], keys, values, torch.arange(base + top, base + bottom), torch.arange(end), scale=0.125, logit_softcap=softcap
                )
                assert torch.equal(part, whole[:, top:bottom]), (span, top, bottom)

"""Starting a forward pass at block b from the recorded FP hidden states gives the logits
of the full pass, for every family, also with block b quantized."""

import pytest
import torch

from quantkit.calibration.collect import collect_activation_statistics
from quantkit.models.architecture import find_decoder_layout
from quantkit.outlier_shadow import ShadowConfig, build_shadow_plan, simulated_quantization
from quantkit.precision import calibrated_precision
from quantkit.sensitivity.truncated import record_block_inputs, starting_at_block
from tests.conftest import TINY_FAMILIES, TINY_VOCAB, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_truncated_forward_equals_the_full_forward(family):
    model = tiny_model(family, planted_outliers=True)
    layout = find_decoder_layout(model)
    ids = torch.randint(0, TINY_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    inputs = record_block_inputs(layout, ids)
    assert len(inputs) == layout.num_blocks
    statistics = collect_activation_statistics(layout, ids, outlier_quantile=0.99, progress=False)
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.99))
    precision = calibrated_precision(layout, plan, ids, "8")
    blocks = list(layout.blocks)
    with torch.no_grad():
        for block in range(layout.num_blocks):
            with simulated_quantization(layout, plan, precision, blocks={block}):
                full = model(input_ids=ids, use_cache=False).logits
                with starting_at_block(layout, block):
                    truncated = model(inputs_embeds=inputs[block], use_cache=False).logits
            assert torch.allclose(truncated, full, atol=1e-5), (family, block)
    assert list(layout.blocks) == blocks  # restored

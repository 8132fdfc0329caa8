import pytest

from quantkit.errors import UnsupportedArchitectureError
from quantkit.models.architecture import SUPPORTED_FAMILIES, find_decoder_layout
from tests.conftest import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_supported_family_is_found_by_structure(family):
    layout = find_decoder_layout(tiny_model(family))
    assert layout.num_blocks == 2
    names = layout.linear_names()
    assert len(names) == 2 * 7
    assert names[:7] == [
        f"model.layers.0.{n}"
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]
    sites = layout.input_sites()
    assert [len(s.linear_names) for s in sites[:4]] == [3, 1, 2, 1]
    assert sites[3].num_channels == 128  # down_proj reads the FFN width


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError) as error:
        find_decoder_layout(model)
    message = str(error.value)
    assert "GPT2LMHeadModel" in message
    for family in SUPPORTED_FAMILIES:
        assert family in message


def test_fused_projections_are_one_site_each():
    """Phi-3's qkv_proj and gate_up_proj: one Linear per site, mapped onto the qkv and
    gate_up graph kinds."""
    from quantkit.runtime.bundle import graph_kind

    from tests.conftest import architecture_case_model

    layout = find_decoder_layout(architecture_case_model("phi3"))
    sites = layout.input_sites()[:4]
    assert [s.linear_names for s in sites] == [
        (f"model.layers.0.{n}",) for n in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    ]
    assert [graph_kind(s.name) for s in sites] == ["qkv", "o", "gate_up", "down"]

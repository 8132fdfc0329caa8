"""Every architecture the README names runs end to end through the runtime's architecture
description: Llama with Llama-3 RoPE scaling, Mistral with a sliding window, Qwen2,
Qwen3, Gemma3 text and Phi-3, as tiny seeded models with planted outliers."""

import dataclasses
import json

import pytest
import torch
from quantkit.runtime.architecture import ArchitectureDescription, LayerAttention
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.errors import UnsupportedArchitectureError
from quantkit.export import export_bundle
from quantkit.models.description import check_description
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.precision import PrecisionPlan
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan
from tests.conftest import ARCHITECTURE_CASES, TINY_VOCAB, TINY_WINDOW, architecture_case_model, tiny_calibration_config, tiny_config
from tests.runtime.simulation import simulated_greedy

CHUNK = 16
PROMPT = 56  # 4 chunks, the last padded; well past the sliding window of the windowed cases


def _export_with_placement(root, where: str, out: str) -> None:
    placement = PlacementPlan.load(root / "calib" / PLACEMENT_FILE)
    placement.placement = [where] * len(placement.placement)
    placement.save(root / "calib" / PLACEMENT_FILE)
    export_bundle(root / "calib", root / out, chunk_size=CHUNK, progress=False)


@pytest.fixture(scope="module", params=ARCHITECTURE_CASES)
def case(request, tmp_path_factory, tiny_tokenizer):
    """One calibration of the case's tiny model, exported twice: every block on the NPU
    ("bundle") and every block on the CPU in FP ("fp-bundle")."""
    root = tmp_path_factory.mktemp(f"arch-{request.param}")
    architecture_case_model(request.param).save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    config = tiny_calibration_config(str(root / "model"))
    calibrate(root / "calib", config, progress=False)
    _export_with_placement(root, "cpu-fp", "fp-bundle")
    _export_with_placement(root, "npu", "bundle")
    return root


def _prompt(length=PROMPT):
    return torch.randint(0, TINY_VOCAB, (length,), generator=torch.Generator().manual_seed(0))


def test_the_description_round_trips_through_the_manifest(case):
    manifest = json.loads((case / "bundle" / "manifest.json").read_text())
    description = ArchitectureDescription.from_dict(manifest["architecture"])
    assert description == load_model(str(case / "model")).architecture
    assert ArchitectureDescription.from_dict(json.loads(json.dumps(description.to_dict()))) == description
    assert BundleModel(case / "bundle").arch == description


def test_cpu_fp_bundle_equals_the_transformers_model(case):
    ids = _prompt()
    model = load_model(str(case / "model")).model
    with torch.no_grad():
        expected = model(input_ids=ids[None], use_cache=False).logits[0]
    got = BundleModel(case / "fp-bundle").prefill(ids)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_quantized_bundle_equals_the_simulated_model_across_chunks_and_windows(case):
    ids = _prompt()
    runtime = BundleModel(case / "bundle")
    loaded = load_model(str(case / "model"))
    plan = ShadowPlan.load(case / "bundle" / "shadow_plan.json")
    precision = PrecisionPlan.load(case / "bundle" / "precision.json")
    with torch.no_grad():
        with simulated_quantization(loaded.layout, plan, precision, blocks={0, 1}):
            reference = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
        fp = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
    got = runtime.prefill(ids)
    # ONNX Runtime and torch may round a value on a quantization boundary differently: a
    # small fraction of the quantization effect itself, and the same predictions.
    assert (got - reference).abs().max() < 0.5 * (reference - fp).abs().max()
    assert (got.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.98
    assert runtime.counters.npu_runs == 4 * 4 * 2


def test_greedy_decode_equals_the_simulated_model(case):
    ids = _prompt(TINY_WINDOW + 10)  # decoding continues past the window
    got = list(BundleModel(case / "bundle").generate(ids, max_new_tokens=8))
    assert got == simulated_greedy(case / "model", case / "bundle", ids, 8)


def test_without_its_window_or_rope_table_the_description_no_longer_matches(case):
    """The features the description carries matter for these models (attention sharpened,
    prompts past the window): a description without the window, or with a RoPE table off
    by 5%, is caught by the check calibration runs."""
    loaded = load_model(str(case / "model"))
    faithful = loaded.architecture
    check_description(loaded.layout, faithful, tokens=PROMPT)
    wrong_rope = {name: dataclasses.replace(table, inv_freq=tuple(f * 1.05 for f in table.inv_freq)) for name, table in faithful.ropes.items()}
    with pytest.raises(UnsupportedArchitectureError, match="differs from quantkit's description"):
        check_description(loaded.layout, dataclasses.replace(faithful, ropes=wrong_rope), tokens=PROMPT)
    if any(layer.window for layer in faithful.layers):
        no_window = tuple(LayerAttention(layer.rope, None) for layer in faithful.layers)
        with pytest.raises(UnsupportedArchitectureError, match="differs from quantkit's description"):
            check_description(loaded.layout, dataclasses.replace(faithful, layers=no_window), tokens=PROMPT)


def test_a_dynamic_rope_model_is_refused_at_calibrate_naming_the_feature(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    with pytest.raises(UnsupportedArchitectureError, match="RoPE type 'dynamic' rescales its frequencies"):
        calibrate(
            tmp_path / "calib", CalibrationConfig.preset(model=str(tmp_path / "model"), num_sequences=2, seq_len=32, aimet_num_sequences=1), progress=False
        )
    assert not (tmp_path / "calib").exists()


def test_a_post_norm_block_is_refused_naming_the_missing_norm():
    from transformers import AutoModelForCausalLM, Olmo2Config

    from quantkit.models.architecture import find_decoder_layout
    from quantkit.models.description import describe_architecture

    model = AutoModelForCausalLM.from_config(
        Olmo2Config(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="no input_layernorm"):
        describe_architecture(find_decoder_layout(model))


def _rope_scaled_model(kind: str):
    from transformers import AutoModelForCausalLM

    from tests.conftest import sharpen_attention

    config = tiny_config("llama" if kind == "yarn" else "phi3")
    if kind == "yarn":
        config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128}
    else:  # LongRoPE as Phi-3-128k configures it: short factors up to the original context, long beyond
        config = type(config)(
            **{
                **config.to_dict(),
                "original_max_position_embeddings": 128,
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                    "original_max_position_embeddings": 128,
                    "short_factor": [1.0, 1.1, 1.2, 1.3],
                    "long_factor": [2.0, 3.0, 4.0, 5.0],
                },
            }
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    sharpen_attention(model)
    return model


@pytest.mark.parametrize("kind", ["yarn", "longrope"])
def test_static_rope_scaling_is_described_exactly_within_its_context(kind):
    from quantkit.models.architecture import find_decoder_layout
    from quantkit.models.description import describe_architecture

    layout = find_decoder_layout(_rope_scaled_model(kind))
    description = describe_architecture(layout)
    assert description.ropes["default"].attention_scaling > 1.0  # YaRN's / LongRoPE's cos-sin factor
    assert check_description(layout, description, tokens=128) < 1e-5
    if kind == "longrope":  # past its original context the model switches to the long factors: the bundle stops there
        assert description.max_positions == 128
        with pytest.raises(UnsupportedArchitectureError):
            check_description(layout, description, tokens=140)


def test_windowed_blocks_keep_only_the_window_in_their_kv_cache(case):
    runtime = BundleModel(case / "bundle")
    result = runtime.run_prefill(_prompt())
    for block, layer in enumerate(runtime.arch.layers):
        cached = result.cache.keys[block][0].shape[1]
        assert cached == (PROMPT if layer.window is None else layer.window - 1)
        assert result.cache.first_position[block][0] == PROMPT - cached
    assert result.cache.length == PROMPT

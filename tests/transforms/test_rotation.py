"""The residual-stream rotation (QuaRot R1): the same function, folded norms, an untied
head, planted outlier channels spread — on every family it supports — and a rotated
calibration exported and run by the runtime as the simulation predicts."""

import json

import pytest
import torch
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.errors import UnsupportedArchitectureError
from quantkit.export import export_bundle
from quantkit.models.architecture import find_decoder_layout
from quantkit.models.description import check_description, describe_architecture
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.precision import PrecisionPlan
from quantkit.transforms import rotate_residual_stream
from quantkit.weights import WEIGHTS_FILE, load_weights
from tests.conftest import ARCHITECTURE_CASES, PLANTED_CHANNELS, TINY_VOCAB, architecture_case_model, tiny_calibration_config, tiny_model

ROTATABLE = tuple(case for case in ARCHITECTURE_CASES if case != "gemma3")
IDS = torch.randint(0, TINY_VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))


def _rotated(model):
    layout = find_decoder_layout(model)
    record = rotate_residual_stream(layout, describe_architecture(layout, check=False))
    return layout, record


@pytest.mark.parametrize("case", ROTATABLE)
@torch.no_grad()
def test_rotation_keeps_the_function(case):
    model = architecture_case_model(case)
    before = model(input_ids=IDS, use_cache=False).logits
    layout, record = _rotated(model)
    after = model(input_ids=IDS, use_cache=False).logits
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    assert record.hidden_size == model.config.hidden_size and record.kind == "hadamard"
    description = describe_architecture(layout)  # the runtime's interpretation of the rotated weights holds too
    assert not description.tied_embeddings
    check_description(layout, description, tolerance=1e-4)
    for norm in (description.pre_attention_norm, description.pre_mlp_norm):
        folded = model.get_parameter(description.block_tensor(1, norm.weight)) + norm.offset
        assert torch.equal(folded, torch.ones_like(folded))


def test_rotation_spreads_planted_outlier_channels():
    """The MLP input of block 0 has planted channels ×40 (conftest): rotated, no channel stands out."""
    model = tiny_model("llama", planted_outliers=True)
    inputs = {}
    hook = lambda module, args, output: inputs.__setitem__("x", args[0].detach())  # noqa: E731

    def peak_to_rms(model) -> float:
        handle = model.model.layers[0].mlp.gate_proj.register_forward_hook(hook)
        with torch.no_grad():
            model(input_ids=IDS, use_cache=False)
        handle.remove()
        x = inputs["x"].flatten(0, 1)
        return float(x.abs().max() / x.pow(2).mean().sqrt())

    plain = peak_to_rms(model)
    channel_peaks = inputs["x"].abs().amax((0, 1))
    assert set(channel_peaks.topk(len(PLANTED_CHANNELS)).indices.tolist()) == set(PLANTED_CHANNELS)
    _rotated(model)
    rotated = peak_to_rms(model)
    assert plain > 6 and rotated < 0.5 * plain, (plain, rotated)


def test_post_norm_families_are_refused():
    model = architecture_case_model("gemma3")
    layout = find_decoder_layout(model)
    with pytest.raises(UnsupportedArchitectureError, match="post-attention / post-FFN norms.*--rotation none"):
        rotate_residual_stream(layout, describe_architecture(layout, check=False))


@pytest.fixture(scope="module")
def rotated_bundle(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("rotated")
    model = tiny_model("qwen2", planted_outliers=True)  # biases: the output-side rotation moves o/down biases too
    model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    config = tiny_calibration_config(
        str(root / "model"),
        rotation="hadamard",
        activation_bits="16",
    )
    calibrate(root / "calib", config, progress=False)
    export_bundle(root / "calib", root / "bundle", chunk_size=16, progress=False)
    return root


def test_rotated_bundle_records_its_basis_and_runs_as_simulated(rotated_bundle):
    bundle = rotated_bundle / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["rotation"]["kind"] == "hadamard" and manifest["rotation"]["hidden_size"] == 64
    assert manifest["architecture"]["lm_head_weight"] != manifest["architecture"]["embed_weight"]
    assert CalibrationConfig.load(rotated_bundle / "calib" / "config.json").rotation == "hadamard"
    loaded = load_model(str(rotated_bundle / "model"), rotation="hadamard")  # the basis calibration measured in
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    precision = PrecisionPlan.load(bundle / "precision.json")
    weights = load_weights(rotated_bundle / "calib" / WEIGHTS_FILE)
    runtime = BundleModel(bundle)
    npu = {b for b, where in enumerate(runtime.placement) if where == "npu"}
    assert npu, "the tiny rotated model should keep blocks on the NPU"
    ids = IDS[0, :37]
    with torch.no_grad():
        with simulated_quantization(loaded.layout, plan, precision, blocks=npu, weights=weights):
            reference = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
        fp = load_model(str(rotated_bundle / "model")).model(input_ids=ids[None], use_cache=False).logits[0]  # the unrotated model
    got = runtime.prefill(ids)
    assert (got - reference).abs().max() < 0.05 * (reference - fp).abs().max()  # A16: float summation order only
    assert (reference - fp).abs().max() > 0  # the quantization did something to compare with

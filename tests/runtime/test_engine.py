"""The bundle executor on tiny models: chunked prefill against the simulated-quant model."""

import pytest
import torch

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.export import export_bundle
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.runtime.bundle import BundleError
from quantkit.runtime.engine import BundleModel
from tests.conftest import TINY_VOCAB, tiny_model

CHUNK = 16


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def bundle(request, tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp(f"runtime-{request.param}")
    folder = root / "model"
    tiny_model(request.param, planted_outliers=True).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    config = CalibrationConfig(model=str(folder), num_sequences=4, seq_len=64, aimet_num_sequences=1, eval_num_sequences=2, eval_seq_len=64, sensitivity_num_sequences=1, sensitivity_seq_len=32)
    calibrate(root / "calib", config, progress=False)
    export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, progress=False)
    return root


def _prompt(length=50):
    return torch.randint(0, TINY_VOCAB, (length,), generator=torch.Generator().manual_seed(0))


def test_chunked_prefill_equals_single_pass_simulation(bundle):
    runtime = BundleModel(bundle / "bundle")
    loaded = load_model(str(bundle / "model"))
    plan = ShadowPlan.load(bundle / "bundle" / "shadow_plan.json")
    npu = {b for b, where in enumerate(runtime.placement) if where == "npu"}
    ids = _prompt()  # 4 chunks of 16, the last one padded
    with torch.no_grad():
        with simulated_quantization(loaded.layout, plan, blocks=npu):
            reference = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
        fp = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
    got = runtime.prefill(ids)
    assert got.shape == reference.shape
    # ONNX Runtime and torch can round a value on an INT8 boundary differently: allow a
    # small fraction of the quantization effect itself, and the same predictions.
    assert (got - reference).abs().max() < 0.5 * (reference - fp).abs().max()
    assert (got.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.98
    assert runtime.counters.npu_runs == 4 * 4 * len(npu)


def test_shadow_path_carries_the_outliers(bundle):
    ids = _prompt()
    with_shadow, without = BundleModel(bundle / "bundle"), BundleModel(bundle / "bundle", shadow=False)
    fp = load_model(str(bundle / "model")).model(input_ids=ids[None], use_cache=False).logits[0].detach()
    error_with = (with_shadow.prefill(ids) - fp).abs().mean()
    error_without = (without.prefill(ids) - fp).abs().mean()
    assert with_shadow.counters.outlier_values > 0 and without.counters.outlier_values == 0
    assert error_with < error_without


def test_prompt_errors(bundle):
    runtime = BundleModel(bundle / "bundle")
    with pytest.raises(BundleError, match="the prompt is empty"):
        runtime.prefill(torch.tensor([], dtype=torch.long))
    with pytest.raises(BundleError, match="this bundle's context is 512 — shorten the prompt"):
        runtime.prefill(torch.zeros(513, dtype=torch.long))


def test_bad_npu_choice(bundle):
    with pytest.raises(BundleError, match="expected 'cpu'"):
        BundleModel(bundle / "bundle", npu="gpu")

"""Real-model smoke tier: SmolLM2-135M from the offline package, real enwiki text.

Part of the default test run (a few short sequences, about a minute on 2 cores).
"""

import json

import pytest

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.models.loading import load_model

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_default_model_loads_with_its_architecture(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.layout.num_blocks == 30
    assert len(smollm2.layout.linear_names()) == 210
    assert sum(p.numel() for p in smollm2.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert smollm2.tokenizer.decode(smollm2.tokenizer("Paris is the capital")["input_ids"]).strip() == "Paris is the capital"


def smoke_calibration_config() -> CalibrationConfig:
    return CalibrationConfig.preset(
        num_sequences=2,
        seq_len=128,
        batch_size=2,
        aimet_num_sequences=1,
        eval_num_sequences=2,
        eval_seq_len=128,
        sensitivity_num_sequences=1,
        sensitivity_seq_len=64,
        accuracy_budget=0.05,
    )


@pytest.fixture(scope="module")
def smoke_calibration(tmp_path_factory):
    return calibrate(tmp_path_factory.mktemp("smollm2") / "calib", smoke_calibration_config(), progress=False)


def test_calibrate_smoke_on_smollm2(smoke_calibration):
    result = smoke_calibration
    ppl = result.perplexities
    assert 5 < ppl["fp"] < 60  # real text, a real (small) model
    assert ppl["aimet_w8a8_per_tensor"] > ppl["fp"] * 1.2  # naive per-tensor W8A8 hurts
    encodings = json.loads((result.out / "encodings.json").read_text())
    assert encodings["version"] == "1.0.0"
    params = {e["name"] for e in encodings["param_encodings"]}
    assert all(f"{name}.weight" in params for name in (f"model.layers.{i}.mlp.down_proj" for i in range(30)))
    assert any(row.site.endswith("down_proj") for row in result.top_layers[:3])  # SmolLM2's outliers live there
    assert (result.out / "report/outlier_heatmap.png").stat().st_size > 10_000


def test_bundle_runtime_tracks_fp_on_real_text(smoke_calibration, smollm2):
    """Export (the calibrated per-graph bits) and run the bundle on held-out text: next-token
    NLL within 2% of FP, the same greedy prediction almost everywhere, a greedy
    continuation — and the calibration summary's perplexity is the bundle's within 0.2%."""
    import torch
    from quantkit.runtime.engine import BundleModel

    from quantkit.data.corpus import load_documents
    from quantkit.export import export_bundle

    bundle = export_bundle(smoke_calibration.out, smoke_calibration.out.parent / "bundle", chunk_size=64, progress=False)
    ids = torch.tensor(smollm2.tokenizer(load_documents("enwiki", "test")[0])["input_ids"][:150])
    with torch.no_grad():
        fp = smollm2.model(input_ids=ids[None]).logits[0].float()
    runtime = BundleModel(bundle)
    logits = runtime.prefill(ids)  # 3 chunks, the last one padded

    def nll(x):
        return torch.nn.functional.cross_entropy(x[:-1], ids[1:]).item()

    assert abs(nll(logits) - nll(fp)) < 0.02 * nll(fp)
    assert (logits.argmax(-1) == fp.argmax(-1)).float().mean() > 0.9
    assert runtime.counters.outlier_values > 0  # SmolLM2's outliers reach the shadow path
    tokens = list(runtime.generate(ids[:40], max_new_tokens=8))
    assert len(tokens) == 8 and runtime.last_generation["decode_seconds"] > 0

    # The summary's quantkit figure predicts the exported bundle on the same tokens.
    from quantkit.eval.perplexity import perplexity

    from quantkit.data.corpus import token_sequences

    config = smoke_calibration_config()
    validation = token_sequences(
        smollm2.tokenizer, load_documents(config.data, "validation"), config.evaluation.eval_num_sequences, config.evaluation.eval_seq_len
    )
    measured = perplexity(lambda batch: runtime.prefill(batch[0])[None], validation, progress=False)
    assert measured == pytest.approx(smoke_calibration.perplexities["quantkit"], rel=0.002)

"""4-bit weights end to end on tiny models: calibrate --weight-bits 4 → export → lint
--qnn → runtime prefill and decode equal the simulated deployed arithmetic."""

import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from quantkit.runtime.engine import BundleModel
from quantkit.runtime.npu import records_from_graph
from quantkit.runtime.qdq import activation_scale

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.export import export_bundle
from quantkit.export.lint import lint_bundle
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.precision import PrecisionPlan
from quantkit.weights import WEIGHTS_FILE, load_weights
from tests.conftest import TINY_VOCAB, plant_output_outliers, tiny_calibration_config, tiny_model

CHUNK = 16
BLOCK = 32


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama+int8", "llama+int4"])
def w4_bundle(request, tmp_path_factory, tiny_tokenizer):
    family, _, offsets = request.param.partition("+")
    root = tmp_path_factory.mktemp(f"w4-{family}{'-' + offsets if offsets else ''}")
    model = tiny_model(family, planted_outliers=True)
    plant_output_outliers(model)
    model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    config = tiny_calibration_config(
        str(root / "model"),
        activation_bits="16",
        weight_bits="4",
        weight_block_size=BLOCK,
        weight_block_offsets=offsets or "none",
        weight_block_offset_graphs="gate_up,down" if offsets == "int4" else "qkv,o,gate_up,down",
    )
    calibrate(root / "calib", config, progress=False)
    export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, progress=False)
    return root


def test_manifest_graphs_and_encodings_declare_the_4_bit_weights(w4_bundle):
    bundle = w4_bundle / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    quantization = manifest["quantization"]
    assert quantization["weight_bits"] == 4 and quantization["activation_bits"] == 16
    offsets = next((form for form in ("int8", "int4") if f"asymmetric ({form} block offsets" in quantization["weights"]), "")
    assert ("block offsets on down, gate_up; the rest symmetric" in quantization["weights"]) == (
        offsets == "int4"
    )  # the fixture's int4 bundle: only those kinds
    offset_kinds = {"int8": {"qkv", "o", "gate_up", "down"}, "int4": {"gate_up", "down"}}.get(offsets, set())  # the fixture's --weight-block-offset-graphs
    assert quantization["npu_weight_bytes_vs_w8"] < (0.7 if offsets else 0.6)  # packed nibbles + scales (tiny rows: the scales weigh more)
    params = {e["name"]: e for e in json.loads((bundle / "encodings.json").read_text())["param_encodings"]}
    precision = PrecisionPlan.load(bundle / "precision.json")
    model = load_model(str(w4_bundle / "model"))
    for entry in manifest["graphs"]:
        graph = onnx.load(str(bundle / entry["file"]))
        initializers = {i.name: i for i in graph.graph.initializer}
        for name in entry["linears"]:
            assert initializers[f"{name}.weight"].data_type == onnx.TensorProto.INT4
            encoding = params[f"{name}.weight"]
            with_offsets = entry["name"].split(".")[1] in offset_kinds
            if model.layout.linear(name).bias is None:  # LPBQ; a biased Linear stays per channel (the HTP refuses LPBQ + bias Add)
                assert encoding["enc_type"] == "LPBQ" and encoding["block_size"] == BLOCK and encoding["compressed_bw"] == 4
                assert (f"{name}.offsets" in params) == with_offsets and (f"{name}.offsets" in initializers) == with_offsets
                if with_offsets and offsets == "int8":
                    assert params[f"{name}.offsets"]["enc_type"] == "PER_CHANNEL" and params[f"{name}.offsets"]["bw"] == 8
                elif with_offsets:
                    assert params[f"{name}.offsets"]["enc_type"] == "PER_CHANNEL" and params[f"{name}.offsets"]["bw"] == 4
                    assert initializers[f"{name}.offsets"].data_type == onnx.TensorProto.INT4
            else:
                assert encoding["enc_type"] == "PER_CHANNEL" and encoding["bw"] == 4
        assert entry["weight_bits"] == 4 and entry["weight_block_offsets"] == (offsets if with_offsets else "none")
        if with_offsets:  # the block means on their own grid, from the calibrated range of the means
            means_scale = onnx.numpy_helper.to_array(initializers[f"{entry['input']}.block_means.scale"])
            means_clip = precision.graphs[entry["linears"][0]].means_clip_
            assert means_scale == np.float32(activation_scale(means_clip, 16)) < onnx.numpy_helper.to_array(initializers[f"{entry['input']}.scale"])
        else:
            assert f"{entry['input']}.block_means.scale" not in initializers


def test_graphs_hold_the_weights_calibration_measured_with(w4_bundle):
    """One definition: the GPTQ-rounded weights calibration stored come back bit for bit."""
    bundle = w4_bundle / "bundle"
    stored = load_weights(w4_bundle / "calib" / WEIGHTS_FILE)
    manifest = json.loads((bundle / "manifest.json").read_text())
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    for entry in manifest["graphs"]:
        for name, record in zip(entry["linears"], records_from_graph(bundle, entry)):
            expected = stored[name]
            codes = expected.codes.clone()
            codes[plan.site_of(name).output_channels_.get(name, [])] = 0  # output-side shadow rows
            assert torch.equal(record.weight.codes, codes) and torch.equal(record.weight.scales, expected.scales)
            assert (record.weight.block_scales is None) == (expected.block_scales is None)
            if expected.has_offsets:
                offsets = expected.offset_codes.clone()
                offsets[plan.site_of(name).output_channels_.get(name, [])] = 0
                assert torch.equal(record.weight.offset_codes, offsets) and torch.equal(record.weight.offset_scales, expected.offset_scales)
                assert record.weight.offset_format == expected.offset_format
            else:
                assert not record.weight.has_offsets


def test_prefill_and_decode_equal_the_simulated_model(w4_bundle):
    bundle = w4_bundle / "bundle"
    runtime = BundleModel(bundle)
    loaded = load_model(str(w4_bundle / "model"))
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    precision = PrecisionPlan.load(bundle / "precision.json")
    weights = load_weights(w4_bundle / "calib" / WEIGHTS_FILE)
    npu = {b for b, where in enumerate(runtime.placement) if where == "npu"}
    ids = torch.randint(0, TINY_VOCAB, (50,), generator=torch.Generator().manual_seed(0))  # 4 chunks, the last padded
    with torch.no_grad():
        with simulated_quantization(loaded.layout, plan, precision, blocks=npu, weights=weights):
            reference = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
            tokens = ids.tolist()
            for _ in range(6):
                tokens.append(int(loaded.model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1].argmax()))
        fp = loaded.model(input_ids=ids[None], use_cache=False).logits[0]
    got = runtime.prefill(ids)
    assert (got - reference).abs().max() < 0.05 * (reference - fp).abs().max()  # A16: float summation order only
    assert list(runtime.generate(ids, max_new_tokens=6)) == tokens[len(ids) :]


def test_lint_qnn_runs_every_4_bit_graph_on_the_htp(w4_bundle):
    report = lint_bundle(w4_bundle / "bundle", qnn=True)
    assert report.ok, report.problems
    assert min(report.sqnr_db.values()) >= 40.0


def test_lint_catches_a_wrong_lpbq_encoding(w4_bundle, tmp_path):
    import shutil

    from quantkit.runtime.bundle import file_sha256

    bundle = tmp_path / "bundle"
    shutil.copytree(w4_bundle / "bundle", bundle)
    encodings = json.loads((bundle / "encodings.json").read_text())
    lpbq = next((e for e in encodings["param_encodings"] if e["enc_type"] == "LPBQ"), None)
    if lpbq is None:
        pytest.skip("every Linear of this family has a bias: no LPBQ weight")
    lpbq["per_block_int_scale"][0] = 17 - lpbq["per_block_int_scale"][0]
    (bundle / "encodings.json").write_text(json.dumps(encodings))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["encodings.json"] = file_sha256(bundle / "encodings.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = lint_bundle(bundle)
    assert any("per-block integer scales differ" in p for p in report.problems), report.problems


def test_export_refuses_a8_for_4_bit_weights(w4_bundle, tmp_path):
    from quantkit.errors import QuantkitError

    with pytest.raises(QuantkitError, match="only with 16-bit activations"):
        export_bundle(w4_bundle / "calib", tmp_path / "b8", chunk_size=CHUNK, activation_bits=8, progress=False)
    assert not (tmp_path / "b8").exists()


def test_config_rejects_4_bit_weights_with_8_bit_activations():
    with pytest.raises(ValueError, match="only with 16-bit activations"):
        CalibrationConfig.preset(weight_bits="4", activation_bits="8")
    with pytest.raises(ValueError, match="weight_block_size"):
        CalibrationConfig.preset(weight_bits="4", weight_block_size=20)


def test_weight_bits_auto_keeps_int8_where_4_bits_cost_the_budget(tmp_path, tiny_model_folder):
    """--weight-bits auto: measured points, each graph's stored weights in its graph's format."""
    config = tiny_calibration_config(
        str(tiny_model_folder),
        activation_bits="16",
        weight_bits="auto",
        weight_block_size=BLOCK,
        accuracy_budget=0.002,
    )
    calibrate(tmp_path / "calib", config, progress=False)
    precision = PrecisionPlan.load(tmp_path / "calib" / "precision.json")
    stored = load_weights(tmp_path / "calib" / WEIGHTS_FILE)
    assert precision.weight_search_ and len(precision.weight_sensitivity_) == len(precision.graphs)
    assert precision.weight_search_[0]["w4_mac_share"] == 1.0  # the search starts from every A16 graph at W4
    for graph in precision.graphs.values():
        assert all(stored[name].bits == graph.weight_bits for name in graph.linear_names)
    summary = json.loads((tmp_path / "calib" / "summary.json").read_text())
    assert summary["weight_bits"] == precision.weight_bits()


def test_an_offset_graph_without_a_means_grid_reads_back_on_the_input_grid(w4_bundle, tmp_path):
    """Bundles written before the block means had their own grid requantized them on the
    input's: the read-back record does the same, and still equals ONNX Runtime's result."""
    from quantkit.runtime.sessions import cpu_session

    from quantkit.quant_primitives import sqnr_db

    bundle = w4_bundle / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next((e for e in manifest["graphs"] if e["weight_block_offsets"] != "none"), None)
    if entry is None:
        pytest.skip("no block offsets in this bundle")
    model = onnx.load(str(bundle / entry["file"]))
    means_scale = f"{entry['input']}.block_means.scale"
    for node in model.graph.node:
        node.input[:] = [f"{entry['input']}.scale" if name == means_scale else name for name in node.input]
    kept = [init for init in model.graph.initializer if init.name != means_scale]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    (tmp_path / "npu").mkdir()
    onnx.save(model, str(tmp_path / entry["file"]))
    records = records_from_graph(tmp_path, entry)
    assert all(r.block_means_scale == r.input_scale for r in records if r.weight.has_offsets)
    x = 0.2 * torch.randn(CHUNK, entry["input_shape"][2], generator=torch.Generator().manual_seed(3))
    expected = cpu_session(tmp_path / entry["file"]).run(None, {entry["input"]: x[None].numpy()})
    for record, output in zip(records, expected):
        # float summation order only: a block mean on a rounding boundary may land one coarse step away
        assert sqnr_db(torch.from_numpy(output[0]), record(x)) > 50

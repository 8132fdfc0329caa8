"""Export and lint on a tiny Qwen2 (it has q/k/v biases, so INT32 bias is exercised)."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from quantkit.runtime.bundle import BundleError, file_sha256, load_manifest
from quantkit.runtime.sessions import cpu_session
from safetensors.torch import load_file

import quantkit.export.bundle as bundle_module
from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.cli import main
from quantkit.errors import QuantkitError
from quantkit.export import export_bundle, lint_bundle
from quantkit.export.lint import MIN_SQNR_DB, SQNR_MARGIN_DB
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan

CHUNK = 16


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import plant_output_outliers, tiny_model

    root = tmp_path_factory.mktemp("export")
    model_folder = root / "tiny-qwen2"
    model = tiny_model("qwen2", planted_outliers=True)
    plant_output_outliers(model)
    model.save_pretrained(model_folder)
    tiny_tokenizer.save_pretrained(model_folder)
    config = CalibrationConfig.preset(
        model=str(model_folder),
        num_sequences=4,
        seq_len=32,
        aimet_num_sequences=1,
        eval_num_sequences=2,
        eval_seq_len=32,
        sensitivity_num_sequences=1,
        sensitivity_seq_len=32,
    )
    calibrate(root / "calib", config, progress=False)
    export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, activation_bits=8, progress=False)  # the paper's INT8 scheme
    return root


def _copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle / "bundle", target)
    return target


def _rehash(bundle, relative):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][relative] = file_sha256(bundle / relative)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _edit_encodings(bundle, edit):
    encodings = json.loads((bundle / "encodings.json").read_text())
    edit(encodings)
    (bundle / "encodings.json").write_text(json.dumps(encodings))
    _rehash(bundle, "encodings.json")


def test_bundle_has_the_designed_layout(tiny_bundle):
    bundle = tiny_bundle / "bundle"
    manifest = load_manifest(bundle)
    assert manifest["chunk_size"] == CHUNK
    assert {g["name"] for g in manifest["graphs"]} >= {"block00.qkv", "block00.o", "block00.gate_up", "block00.down"}
    for graph in manifest["graphs"]:
        assert graph["input_shape"][:2] == [1, CHUNK]
        assert graph["converter_command"].startswith(f"qnn-onnx-converter --input_network {graph['file']} --quantization_overrides encodings.json")
    for name in (
        "encodings.json",
        "shadow.safetensors",
        "shadow_cold.safetensors",
        "cpu.safetensors",
        "tokenizer/tokenizer.json",
        "shadow_plan.json",
        "report/index.html",
        "report/outlier_heatmap.png",
    ):
        assert name in manifest["files"], name
    assert not any(p.suffix in {".pkl", ".pt", ".bin"} and "qnn" not in p.name for p in bundle.rglob("*"))  # no pickle
    assert lint_bundle(bundle).ok


def test_graphs_serialise_the_records_calibration_measured_with(tiny_bundle):
    """One definition: the records the export built each graph from (the ones calibration's
    DeployedLinear runs) come back bit for bit from the graph's initializers, and ONNX
    Runtime computes them up to float summation order (at most one output step, rarely)."""
    from quantkit.runtime.npu import records_from_graph

    from quantkit.outlier_shadow.simulated_linear import deployed_record
    from quantkit.precision import PrecisionPlan
    from quantkit.weights import WEIGHTS_FILE, load_weights

    bundle = tiny_bundle / "bundle"
    manifest = load_manifest(bundle)
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    precision = PrecisionPlan.load(bundle / "precision.json")
    assert plan.config.weight_scale_rule == "mse" and "(mse scales" in manifest["quantization"]["weights"]  # the default
    loaded = load_model(json.loads((tiny_bundle / "calib" / "config.json").read_text())["model"])
    weights = load_weights(tiny_bundle / "calib" / WEIGHTS_FILE)  # what calibration measured with
    inputs = load_file(str(bundle / "calibration_inputs.safetensors"))
    exact, total = 0, 0
    for graph in manifest["graphs"]:
        site = plan.sites[graph["linears"][0]]
        graph_precision = precision.graphs[site.linear_names[0]]
        assert graph["activation_bits"] == graph_precision.activation_bits == 8  # the fixture's --activation-bits 8
        read_back = records_from_graph(bundle, graph)
        x = inputs[site.linear_names[0]].float() * read_back[0].input_scale
        outputs = cpu_session(bundle / graph["file"]).run(None, {graph["input"]: x.numpy()})
        for name, record, got in zip(site.linear_names, read_back, outputs):
            built = deployed_record(loaded.layout.linear(name), name, site, graph_precision.activation_bits, graph_precision.output_clip(name), weights[name])
            assert torch.equal(built.weight.dequantize(), record.weight.dequantize()) and (built.weight.bits, built.weight.block_size) == (
                record.weight.bits,
                record.weight.block_size,
            )
            assert (built.input_scale, built.output_scale, built.bits) == (record.input_scale, record.output_scale, record.bits)
            assert (built.bias_codes is None) == (record.bias_codes is None)
            if built.bias_codes is not None:
                assert torch.equal(built.bias_codes, record.bias_codes) and torch.equal(built.bias_scales, record.bias_scales)
            expected = built(x).numpy()
            assert np.abs(got - expected).max() <= record.output_scale * 1.001, name
            exact += int((got == expected).sum())
            total += got.size
    assert exact >= 0.99 * total


def test_qnn_htp_runs_every_graph_without_cpu_fallback(tiny_bundle):
    report = lint_bundle(tiny_bundle / "bundle", qnn=True)
    assert report.ok, report.problems
    assert set(report.sqnr_db) == {g["name"] for g in load_manifest(tiny_bundle / "bundle")["graphs"]}
    assert min(report.sqnr_db.values()) >= MIN_SQNR_DB[8]
    # HTP and CPU are each compared with the float reference: neither is the other's yardstick
    assert all(abs(report.sqnr_db[g] - report.cpu_sqnr_db[g]) <= SQNR_MARGIN_DB for g in report.sqnr_db)
    # the runtime's integer kernels of the A8 graphs: as close to float as the graph as written
    a8 = {g["name"] for g in load_manifest(tiny_bundle / "bundle")["graphs"] if g["activation_bits"] == 8}
    assert set(report.integer_sqnr_db) == a8 and a8
    assert all(report.integer_sqnr_db[g] >= report.cpu_sqnr_db[g] - SQNR_MARGIN_DB for g in a8)


def test_lint_catches_a_missing_encoding(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_encodings(bundle, lambda e: e["activation_encodings"].pop(0))
    problems = lint_bundle(bundle).problems
    assert any("model.layers.0.self_attn.q_proj.input: no encoding" in p for p in problems), problems


def test_lint_catches_a_renamed_tensor(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)

    def rename(encodings):
        encodings["param_encodings"][0]["name"] += "_renamed"

    _edit_encodings(bundle, rename)
    problems = lint_bundle(bundle).problems
    assert any("no encoding in encodings.json" in p for p in problems)
    assert any("_renamed names no quantized tensor" in p for p in problems)


def test_lint_catches_a_wrong_bit_width_and_offset(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)

    def widen(encodings):
        bias = next(e for e in encodings["param_encodings"] if e["name"].endswith(".bias"))
        bias["bw"] = 8
        encodings["activation_encodings"][1]["offset"] = [0]

    _edit_encodings(bundle, widen)
    problems = lint_bundle(bundle).problems
    assert any("encoding bit-width 8 but the graph stores 32-bit values" in p for p in problems), problems
    assert any("symmetric 8-bit encoding must have offset -128" in p for p in problems), problems


def test_lint_and_loader_catch_a_tampered_file(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    graph = next((bundle / "npu").glob("*.onnx"))
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    (bundle / "stray.txt").write_text("not part of the bundle")
    problems = lint_bundle(bundle).problems
    assert any(f"npu/{graph.name}: sha256 differs" in p for p in problems)
    assert any("stray.txt: present but not listed" in p for p in problems)
    with pytest.raises(BundleError, match="sha256 differs"):
        load_manifest(bundle)


def test_loader_refuses_foreign_and_future_bundles(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not a quantkit bundle manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "quantkit-bundle", "version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        load_manifest(tmp_path)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_manifest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")


def test_failed_export_leaves_nothing_under_the_final_name(tiny_bundle, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_module, "build_site_graph", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(tiny_bundle / "calib", tmp_path / "bundle", chunk_size=CHUNK, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_requests(tiny_bundle, tmp_path):
    with pytest.raises(QuantkitError, match="no config.json; pass the folder written by `quantkit calibrate`"):
        export_bundle(tmp_path, tmp_path / "bundle")
    with pytest.raises(QuantkitError, match="already exists"):
        export_bundle(tiny_bundle / "calib", tiny_bundle / "bundle")
    with pytest.raises(QuantkitError, match="--qnn-context needs a target"):
        export_bundle(tiny_bundle / "calib", tmp_path / "b2", qnn_context=True)


def test_lint_cli_exit_codes(tiny_bundle, tmp_path, capsys):
    assert main(["lint", str(tiny_bundle / "bundle")]) == 0
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_encodings(bundle, lambda e: e["param_encodings"].pop())
    assert main(["lint", str(bundle)]) == 1
    printed = capsys.readouterr().out
    assert "problem(s)" in printed and "no encoding in encodings.json" in printed


def test_w8a16_bundle_runs_on_qnn_htp(tiny_bundle, tmp_path):
    import onnx

    bundle = export_bundle(tiny_bundle / "calib", tmp_path / "bundle16", chunk_size=CHUNK, activation_bits=16, progress=False)
    manifest = load_manifest(bundle)
    assert manifest["quantization"]["activation_bits"] == 16 and manifest["quantization"]["a8_mac_share"] == 0.0
    graph = onnx.load(str(bundle / manifest["graphs"][0]["file"]))
    zero_points = {
        init.name: init.data_type
        for init in graph.graph.initializer
        if init.name.endswith(".zero_point") and ".weight" not in init.name and ".bias" not in init.name
    }
    assert set(zero_points.values()) == {onnx.TensorProto.INT16}
    encodings = json.loads((bundle / "encodings.json").read_text())
    assert {e["bw"] for e in encodings["activation_encodings"]} == {16}
    report = lint_bundle(bundle, qnn=True)
    assert report.ok, report.problems
    assert min(report.sqnr_db.values()) >= 30


def test_naive_w8a8_baseline_bundle(tiny_bundle, tmp_path):
    from quantkit.runtime.engine import BundleModel

    with pytest.raises(QuantkitError, match="pass --activation-bits 8"):
        export_bundle(tiny_bundle / "calib", tmp_path / "naive16", chunk_size=CHUNK, naive_w8a8=True, progress=False)
    bundle = export_bundle(tiny_bundle / "calib", tmp_path / "naive", chunk_size=CHUNK, activation_bits=8, naive_w8a8=True, progress=False)
    manifest = load_manifest(bundle)
    assert set(manifest["placement"]) == {"npu"} and manifest["quantization"]["scheme"].startswith("naive-w8a8")
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    assert all(site.pruned and site.threshold_ == site.absmax_ for site in plan.sites.values())
    assert plan.config.weight_scale_rule == "max" and "(max scales" in manifest["quantization"]["weights"]  # min/max weights too
    loaded = load_model(json.loads((tiny_bundle / "calib" / "config.json").read_text())["model"])
    graph = onnx.load(bundle / manifest["graphs"][0]["file"])
    name = manifest["graphs"][0]["linears"][0]
    scales = next(numpy_helper.to_array(init) for init in graph.graph.initializer if init.name == f"{name}.weight.scale")
    assert np.allclose(scales, loaded.layout.linear(name).weight.detach().abs().amax(dim=1).numpy() / 127)
    runtime = BundleModel(bundle)
    runtime.prefill(torch.arange(40) % 100)
    assert runtime.counters.outlier_values == 0 and runtime.counters.npu_runs == 4 * -(-40 // CHUNK) * len(manifest["placement"])
    assert lint_bundle(bundle).ok


def test_int8_input_int16_output_graphs(tiny_bundle, tmp_path):
    """A8 inputs (int8 × int8 MACs) with int16 outputs: the graph stores both widths, the
    encodings say so, and the runtime's twin reads back the same records and agrees with
    ONNX Runtime's CPU provider. onnxruntime-qnn 2.7's QNN provider refuses this QDQ form
    with per-channel weights (its MatMul node group needs one activation type in and out;
    with a per-tensor weight it runs the MatMul in fp16, slower than A16), and lint says so:
    when a release accepts it, this test fails and the presets can use it."""
    from quantkit.runtime.npu import records_from_graph

    bundle = export_bundle(tiny_bundle / "calib", tmp_path / "bundle8x16", chunk_size=CHUNK, activation_bits=8, output_bits=16, progress=False)
    manifest = load_manifest(bundle)
    assert manifest["quantization"]["a8_mac_share"] == 1.0
    assert {(g["activation_bits"], g["output_bits"]) for g in manifest["graphs"]} == {(8, 16)}
    entry = manifest["graphs"][0]
    graph = onnx.load(str(bundle / entry["file"]))
    types = {init.name: init.data_type for init in graph.graph.initializer}
    assert types[f"{entry['input']}.zero_point"] == onnx.TensorProto.INT8
    assert {types[f"{output}.zero_point"] for output in entry["outputs"]} == {onnx.TensorProto.INT16}
    widths = {e["name"]: e["bw"] for e in json.loads((bundle / "encodings.json").read_text())["activation_encodings"]}
    outputs = {bw for name, bw in widths.items() if name.startswith(tuple(entry["linears"])) and name != entry["input"]}
    assert widths[entry["input"]] == 8 and outputs == {16}
    inputs = load_file(str(bundle / "calibration_inputs.safetensors"))
    records = records_from_graph(bundle, entry)
    assert {(r.bits, r.out_bits) for r in records} == {(8, 16)}
    x = inputs[entry["linears"][0]].float() * records[0].input_scale
    for record, got in zip(records, cpu_session(bundle / entry["file"]).run(None, {entry["input"]: x.numpy()})):
        assert np.abs(got - record(x).numpy()).max() <= record.output_scale * 1.001
    assert lint_bundle(bundle).ok  # encodings, widths and hashes are consistent
    report = lint_bundle(bundle, qnn=True)
    assert not report.ok and all("does not run on QNN HTP with CPU fallback disabled" in problem for problem in report.problems)


def test_lint_inputs_are_split_as_the_runtime_splits_them(tiny_bundle):
    """The stored calibration input of each graph is what its graph sees at run time: the
    sink row (position 0, FP on the CPU) is zero wherever the site has a shadow path."""
    bundle = tiny_bundle / "bundle"
    plan = ShadowPlan.load(bundle / "shadow_plan.json")
    inputs = load_file(str(bundle / "calibration_inputs.safetensors"))
    assert plan.config.sink_tokens == 1
    shadowed = [site for site in plan.sites.values() if site.shadowed]
    assert shadowed and all(inputs[site.linear_names[0]][0, 0].abs().max() == 0 for site in shadowed)
    assert all(inputs[site.linear_names[0]][0, 1:].abs().max() > 0 for site in shadowed)


def test_qnn_context_bundle_runs_its_context_binaries(tiny_bundle, tmp_path):
    """`export --qnn-context` writes each graph compiled for a Snapdragon target; the runtime
    loads those EPContext models on QNN HTP instead of compiling the QDQ graphs, lint holds
    them to their QDQ graphs, and the tokens do not change."""
    from quantkit.runtime.engine import BundleModel
    from quantkit.runtime.generate import generate_text, npu_graphs_from

    bundle = export_bundle(tiny_bundle / "calib", tmp_path / "ctx", chunk_size=CHUNK, activation_bits=8, qnn_context=True, soc_model=60, progress=False)
    manifest = load_manifest(bundle)
    assert manifest["qnn_target"] == {"soc_model": 60, "htp_arch": None}
    for entry in manifest["graphs"]:
        # the context model holds no QDQ node to compile: one EPContext node over the binary
        assert [node.op_type for node in onnx.load(str(bundle / entry["qnn_context"])).graph.node] == ["EPContext"]
    with_contexts = BundleModel(bundle, npu="qnn")
    assert with_contexts.npu_graph_files == {e["name"]: bundle / e["qnn_context"] for e in manifest["graphs"]}
    assert npu_graphs_from(with_contexts) == f"QNN HTP: {len(manifest['graphs'])} graphs loaded from their context binaries"
    prompt = torch.arange(40) % 100
    from_contexts = list(with_contexts.generate(prompt, 6))
    # one after the other: in x86 emulation, graphs loaded from contexts stop running once the
    # process compiles a graph for the emulator's default target (graphs loaded after that run)
    del with_contexts
    compiled = BundleModel(bundle, npu="qnn", qnn_contexts=False)  # the same graphs, compiled at start-up for the same target
    assert compiled.npu_context_graphs == 0
    assert from_contexts == list(compiled.generate(prompt, 6))
    report = lint_bundle(bundle, qnn=True)
    assert report.ok, report.problems
    assert set(report.context_sqnr_db) == {e["name"] for e in manifest["graphs"]}
    assert all(report.context_sqnr_db[name] >= report.sqnr_db[name] - SQNR_MARGIN_DB for name in report.sqnr_db)
    printed = generate_text(bundle, "The history of", max_new_tokens=2, npu="qnn").summary()  # what `quantkit run` prints
    assert f"(QNN HTP: {len(manifest['graphs'])} graphs loaded from their context binaries); first token" in printed and "after loading began" in printed


def test_a16_twin_widens_the_activations_only(tiny_bundle):
    from quantkit.runtime.npu import records_from_graph

    from quantkit.export.profile import a16_twin

    manifest = load_manifest(tiny_bundle / "bundle")
    entry = manifest["graphs"][0]
    graph = onnx.load(str(tiny_bundle / "bundle" / entry["file"]))
    twin = a16_twin(graph)
    before = {i.name: i for i in graph.graph.initializer}
    after = {i.name: i for i in twin.graph.initializer}
    quantize_inputs = {name for node in graph.graph.node if node.op_type == "QuantizeLinear" for name in node.input[1:]}
    for name, init in before.items():
        if name in quantize_inputs and init.data_type == onnx.TensorProto.INT8:  # an activation zero point
            assert after[name].data_type == onnx.TensorProto.INT16
        elif name not in quantize_inputs:  # weights, their scales, biases: untouched
            assert after[name] == init
    # inside the input and output ranges, the 16-bit grid (258× finer) lands far closer to the float product
    records = records_from_graph(tiny_bundle / "bundle", entry)
    clip = 0.9 * records[0].input_scale * 127
    x = np.random.default_rng(0).uniform(-clip, clip, entry["input_shape"]).astype(np.float32)
    path = tiny_bundle / "twin.onnx"
    onnx.save(twin, str(path))
    outputs = [cpu_session(p).run(None, {entry["input"]: x}) for p in (tiny_bundle / "bundle" / entry["file"], path)]
    errors = [[], []]
    for index, r in enumerate(records):
        bias = None if r.bias_codes is None else r.bias_codes.float() * r.bias_scales
        reference = torch.nn.functional.linear(torch.from_numpy(x), r.weight.dequantize(), bias).numpy()
        inside = np.abs(reference) < 0.9 * r.output_scale * 127  # not saturated at the output's range
        for width, produced in enumerate(outputs):
            errors[width].append(np.abs(produced[index] - reference)[inside])
    errors = [np.concatenate(e).mean() for e in errors]
    assert errors[1] < errors[0] / 10


def test_profile_counts_htp_cycles_of_the_bundle_and_its_a16_twin(tiny_bundle, tmp_path, capsys):
    from quantkit.export.profile import profile_bundle

    profile = profile_bundle(tiny_bundle / "bundle", soc_model=60, repeats=2, progress=False)
    manifest = load_manifest(tiny_bundle / "bundle")
    assert [g.name for g in profile.graphs] == [e["name"] for e in manifest["graphs"]]
    assert all(g.cycles > 0 and g.a16_cycles > 0 and g.activation_bits == 8 for g in profile.graphs)
    assert profile.chunk_cycles() == sum(g.cycles for g in profile.graphs)
    assert profile.prefill_tokens_per_s() == pytest.approx(CHUNK / (profile.chunk_cycles() / 1e9))
    assert main(["profile", str(tiny_bundle / "bundle"), "--out", str(tmp_path / "p"), "--htp-clock-ghz", "2"]) == 0
    written = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert written["clock_ghz"] == 2 and len(written["graphs"]) == len(manifest["graphs"]) and (tmp_path / "p" / "profile.png").stat().st_size > 0
    assert "assumed HTP clock of 2 GHz" in capsys.readouterr().out and written["repeats"] == 3

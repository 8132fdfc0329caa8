"""The bundle executor on tiny models: chunked prefill against the simulated-quant model."""

import pytest
import torch
from quantkit.runtime.bundle import BundleError
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import calibrate
from quantkit.export import export_bundle
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.precision import PRECISION_FILE, PrecisionPlan
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan
from tests.conftest import PLANTED_OUTPUT_CHANNELS, TINY_VOCAB, plant_output_outliers, tiny_calibration_config, tiny_model
from tests.runtime.simulation import simulated_greedy

CHUNK = 16


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def bundle(request, tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp(f"runtime-{request.param}")
    folder = root / "model"
    model = tiny_model(request.param, planted_outliers=True)
    plant_output_outliers(model)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    config = tiny_calibration_config(str(folder))
    calibrate(root / "calib", config, progress=False)
    # Both placements in one bundle: the planted outliers live in block 0 (NPU, shadow
    # path); block 1 runs in FP on the CPU (placement.json is the editable plan export reads).
    placement = PlacementPlan.load(root / "calib" / PLACEMENT_FILE)
    placement.placement = ["npu", "cpu-fp"]
    placement.save(root / "calib" / PLACEMENT_FILE)
    # Per-graph activation bits: block 0's qkv and gate_up graphs A16, o and down A8.
    precision = PrecisionPlan.load(root / "calib" / PRECISION_FILE)
    for graph in precision.graphs.values():
        graph.activation_bits = 16 if graph.kind in ("qkv", "gate_up") else 8
    precision.save(root / "calib" / PRECISION_FILE)
    export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, progress=False)
    return root


def _prompt(length=50):
    return torch.randint(0, TINY_VOCAB, (length,), generator=torch.Generator().manual_seed(0))


def test_chunked_prefill_equals_single_pass_simulation(bundle):
    runtime = BundleModel(bundle / "bundle")
    loaded = load_model(str(bundle / "model"))
    plan = ShadowPlan.load(bundle / "bundle" / "shadow_plan.json")
    precision = PrecisionPlan.load(bundle / "bundle" / "precision.json")
    npu = {b for b, where in enumerate(runtime.placement) if where == "npu"}
    ids = _prompt()  # 4 chunks of 16, the last one padded
    with torch.no_grad():
        with simulated_quantization(loaded.layout, plan, precision, blocks=npu):
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


def test_the_sink_position_runs_in_fp(bundle):
    """Position 0 attends only to itself, and with --sink-tokens 1 (the default) its row runs
    on the shadow path in FP at every shadowed site: where every NPU site is shadowed and has
    no bias its logits are FP's; a site without a shadow path (nothing beyond its clip in
    calibration) or a bias (Qwen2's q/k/v: the graph's quantized bias) leaves a little of the
    NPU's arithmetic on it, still far less than on the quantized rows."""
    runtime = BundleModel(bundle / "bundle")
    assert runtime.sink_tokens == 1 and runtime.manifest["shadow"]["sink_tokens"] == 1
    plan = ShadowPlan.load(bundle / "bundle" / "shadow_plan.json")
    npu_sites = [site for site in plan.sites.values() if runtime.placement[site.block_index] == "npu"]
    exact = all(site.shadowed for site in npu_sites) and "qwen2" not in bundle.name  # the fixture's folder names its family
    ids = _prompt()
    fp = load_model(str(bundle / "model")).model(input_ids=ids[None], use_cache=False).logits[0].detach()
    got = runtime.prefill(ids)
    quantized = (got[1:] - fp[1:]).abs().max()
    assert (got[0] - fp[0]).abs().max() < (1e-4 if exact else 0.1 * quantized)
    assert quantized > 1e-3


def test_sink_rows_shadow_products_are_reused_exactly(bundle):
    """A prompt starting with the same token as an earlier one reuses its sink rows'
    shadow products (runtime/shadow.py) — the same logits as a fresh runtime's, fewer
    cold columns read."""
    ids = _prompt()
    other = torch.cat([ids[:1], (ids[1:] + 1) % TINY_VOCAB])
    warm, fresh = BundleModel(bundle / "bundle"), BundleModel(bundle / "bundle")
    warm.prefill(ids)
    columns, values = warm.counters.cold_columns, warm.counters.outlier_values
    assert torch.equal(warm.prefill(other), fresh.prefill(other))
    assert warm.counters.cold_columns - columns < fresh.counters.cold_columns
    assert warm.counters.outlier_values - values == fresh.counters.outlier_values  # the reused rows' values still counted


def test_prompt_errors(bundle):
    runtime = BundleModel(bundle / "bundle")
    with pytest.raises(BundleError, match="the prompt is empty"):
        runtime.prefill(torch.tensor([], dtype=torch.long))
    with pytest.raises(BundleError, match="this bundle's context is 512 — shorten the prompt"):
        runtime.prefill(torch.zeros(513, dtype=torch.long))


def test_bad_npu_choice(bundle):
    with pytest.raises(BundleError, match="expected 'cpu'"):
        BundleModel(bundle / "bundle", npu="gpu")


def test_out_of_order_equals_in_order(bundle):
    ids = _prompt()
    ooo = BundleModel(bundle / "bundle", schedule="ooo").run_prefill(ids)
    in_order = BundleModel(bundle / "bundle", schedule="inorder").run_prefill(ids)
    assert torch.equal(ooo.logits, in_order.logits)  # every data dependency is an edge
    assert len(ooo.schedule.runs) == len(in_order.schedule.runs)


def test_cpu_placed_blocks_run_in_fp(bundle):
    runtime = BundleModel(bundle / "bundle")
    assert runtime.placement == ["npu", "cpu-fp"]

    result = runtime.run_prefill(_prompt(20))
    ran = {result.schedule.tasks[r.index].name for r in result.schedule.runs}
    for block, where in enumerate(runtime.placement):
        assert (f"c0.b{block}.cpu_block" in ran) == (where == "cpu-fp")
        assert (f"c0.b{block}.qkv" in ran) == (where == "npu")


def test_qdq_twin_of_each_graph_matches_onnx_runtime(bundle):
    from quantkit.runtime.npu import OrtGraph, QdqGraph

    runtime = BundleModel(bundle / "bundle")
    for entry in runtime.manifest["graphs"]:
        ort_graph, twin = OrtGraph(runtime.folder, entry, "cpu"), QdqGraph(runtime.folder, entry)
        x = torch.randn(CHUNK - 3, entry["input_shape"][-1], generator=torch.Generator().manual_seed(1))
        for got, expected in zip(twin(x), ort_graph(x)):
            step = float(expected.unique().diff().abs().min())  # one output quantization step
            assert (got - expected).abs().max() <= step * 1.001, entry["name"]


def test_a8_graphs_run_on_integer_kernels_within_one_output_step_of_the_graph(bundle):
    """The same input codes, weights and output grid; the float sum of the graph becomes
    an exact int32 sum, so only outputs on a rounding boundary move, by one step."""
    from quantkit.runtime.npu import OrtGraph

    runtime = BundleModel(bundle / "bundle")
    kinds = set()
    for entry in runtime.manifest["graphs"]:
        integer, as_written = (OrtGraph(runtime.folder, entry, "cpu", kernels=k) for k in ("integer", "qdq"))
        assert integer.integer == (entry["activation_bits"] == 8) and not as_written.integer
        kinds.add(integer.integer)
        x = torch.randn(CHUNK - 3, entry["input_shape"][-1], generator=torch.Generator().manual_seed(2)) * 2
        for got, expected in zip(integer(x), as_written(x), strict=True):
            step = float(expected.unique().diff().abs().min())
            moved = (got - expected).abs() > step / 2
            assert (got - expected).abs().max() <= step * 1.001 and moved.float().mean() <= 0.01, entry["name"]
    assert kinds == {True, False}  # the fixture's bundle has A8 and A16 graphs
    assert runtime.integer_graphs == sum(entry["activation_bits"] == 8 for entry in runtime.manifest["graphs"])


def test_unknown_kernels_are_refused(bundle):
    with pytest.raises(BundleError, match="kernels: got 'fast', expected one of integer, qdq"):
        BundleModel(bundle / "bundle", kernels="fast")


def test_greedy_decode_equals_the_simulated_model(bundle):
    ids = _prompt(20)
    runtime = BundleModel(bundle / "bundle")
    got = list(runtime.generate(ids, max_new_tokens=8))
    assert got == simulated_greedy(bundle / "model", bundle / "bundle", ids, 8)
    assert runtime.last_generation["new_tokens"] == 8 and runtime.last_generation["decode_seconds"] > 0


def test_sampling_is_seeded_and_top_k_1_is_greedy(bundle):
    runtime = BundleModel(bundle / "bundle")
    ids = _prompt(20)
    greedy = list(runtime.generate(ids, 6))
    assert list(runtime.generate(ids, 6, temperature=1.0, top_k=1, seed=3)) == greedy
    first = list(runtime.generate(ids, 6, temperature=1.5, seed=7))
    assert list(runtime.generate(ids, 6, temperature=1.5, seed=7)) == first
    assert any(list(runtime.generate(ids, 6, temperature=1.5, seed=s)) != greedy for s in range(5))
    stop = greedy[2]
    assert list(runtime.generate(ids, 6, stop_token_ids=(stop,))) == greedy[: greedy.index(stop) + 1]


def test_generation_errors(bundle):
    runtime = BundleModel(bundle / "bundle")
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(runtime.generate(_prompt(5), -1))
    with pytest.raises(ValueError, match="temperature"):
        list(runtime.generate(_prompt(5), 2, temperature=-1))
    with pytest.raises(BundleError, match="context is full"):
        list(runtime.generate(_prompt(510), 5))
    with pytest.raises(BundleError, match=r"token ids must lie in \[0, "):
        runtime.prefill(torch.tensor([0, TINY_VOCAB]))


def test_run_cli_streams_text_and_writes_a_trace(bundle, tmp_path, capsys):
    from quantkit.cli import main

    trace = tmp_path / "trace.json"
    assert main(["run", str(bundle / "bundle"), "--prompt", "The history of the city", "--max-new-tokens", "5", "--trace", str(trace)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # the generated text
    assert "prefill:" in captured.err and "tokens/s" in captured.err and "bubble ratio" in captured.err
    import json

    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["args"]["name"] for e in events if e["ph"] == "M"} == {"NPU", "CPU"}
    assert main(["run", str(bundle / "bundle"), "--prompt-file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_qnn_htp_executor_agrees_with_the_cpu_provider(bundle):
    ids = _prompt(40)
    on_cpu = BundleModel(bundle / "bundle").prefill(ids)
    on_htp = BundleModel(bundle / "bundle", npu="qnn").prefill(ids)  # CPU fallback disabled
    from quantkit.export.lint import SQNR_MARGIN_DB
    from quantkit.quant_primitives import sqnr_db

    with torch.no_grad():
        fp = load_model(str(bundle / "model")).model(input_ids=ids[None], use_cache=False).logits[0]
    # lint --qnn's rule, here on the model's logits: each executor against FP, HTP no
    # more than the margin below CPU (A8 graphs: the two round some outputs one step apart)
    assert sqnr_db(fp, on_htp) >= sqnr_db(fp, on_cpu) - SQNR_MARGIN_DB
    assert (on_htp.argmax(-1) == on_cpu.argmax(-1)).float().mean() >= 0.95


def test_output_side_shadow_computes_the_massive_output_channels_on_the_cpu(bundle):
    """The planted up_proj rows make two output channels dwarf the rest: calibration sends
    them to the CPU (FP rows in the bundle), the graph's rows for them are zero, and its
    output range no longer has to cover them."""
    from quantkit.runtime.npu import records_from_graph

    plan = ShadowPlan.load(bundle / "bundle" / "shadow_plan.json")
    site = plan.sites["model.layers.0.mlp.gate_proj"]
    assert site.output_channels_.get("model.layers.0.mlp.up_proj") == list(PLANTED_OUTPUT_CHANNELS)
    runtime = BundleModel(bundle / "bundle")
    entry = runtime._graph_entries[(0, "gate_up")]
    gate, up = records_from_graph(runtime.folder, entry)
    assert up.weight.codes[list(PLANTED_OUTPUT_CHANNELS)].abs().sum() == 0 and up.weight.codes.abs().sum() > 0
    loaded = load_model(str(bundle / "model"))
    weight = loaded.layout.linear("model.layers.0.mlp.up_proj").weight
    rows_absmax = weight.abs().amax(dim=1)
    assert rows_absmax[list(PLANTED_OUTPUT_CHANNELS)].min() > 10 * rows_absmax.median()
    # the range is set by the channels left on the NPU, far below the planted ones
    precision = PrecisionPlan.load(bundle / "bundle" / "precision.json")
    clip = precision.of("model.layers.0.mlp.up_proj").output_clip("model.layers.0.mlp.up_proj")
    ids = _prompt(16)
    with torch.no_grad():
        captured = {}
        handle = loaded.layout.linear("model.layers.0.mlp.up_proj").register_forward_hook(lambda m, a, y: captured.setdefault("y", y))
        loaded.model(input_ids=ids[None], use_cache=False)
        handle.remove()
    assert captured["y"][..., list(PLANTED_OUTPUT_CHANNELS)].abs().max() > 3 * clip


def test_mixed_precision_bundle_declares_and_lints_each_graphs_bits(bundle):
    """Block 0's qkv and gate_up graphs are A16, o and down A8 (the fixture's plan): the
    manifest, the graphs' zero-point types and the encodings say so, and every graph runs
    on QNN HTP with CPU fallback disabled."""
    import json

    import onnx

    from quantkit.export.lint import lint_bundle

    runtime = BundleModel(bundle / "bundle")
    assert runtime.manifest["quantization"]["activation_bits"] == "mixed"
    encodings = {e["name"]: e for e in json.loads((bundle / "bundle" / "encodings.json").read_text())["activation_encodings"]}
    for entry in runtime.manifest["graphs"]:
        expected = 16 if entry["name"].endswith(("qkv", "gate_up")) else 8
        assert entry["activation_bits"] == expected
        graph = onnx.load(str(bundle / "bundle" / entry["file"]))
        zero_point = next(i for i in graph.graph.initializer if i.name == f"{entry['input']}.zero_point")
        assert zero_point.data_type == (onnx.TensorProto.INT16 if expected == 16 else onnx.TensorProto.INT8)
        assert encodings[entry["input"]]["bw"] == expected
    report = lint_bundle(bundle / "bundle", qnn=True)
    assert report.ok, report.problems


def test_folded_weights_change_only_the_float_summation_order(bundle, tmp_path):
    """The runtime's ONNX Runtime sessions fold each weight's DequantizeLinear into a float
    constant (prepacked by MatMul). Against the graph run as written: the float products
    agree to float32 rounding, and an output moves by at most one quantization step, on
    the few values that sat on a rounding boundary."""
    import numpy as np
    import onnx
    from quantkit.runtime.sessions import ort_cpu_session

    manifest = BundleModel(bundle / "bundle").manifest
    x = np.random.default_rng(0).standard_normal((1, CHUNK, 1)).astype(np.float32)
    for entry in manifest["graphs"]:
        model = onnx.load(str(bundle / "bundle" / entry["file"]))
        products = [n.output[0] for n in model.graph.node if n.op_type == "MatMul"]
        model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in products)
        path = tmp_path / f"{entry['name']}.onnx"
        onnx.save(model, str(path))
        feed = {entry["input"]: np.repeat(x, entry["input_shape"][-1], axis=2) * np.linspace(-2, 2, entry["input_shape"][-1], dtype=np.float32)}
        as_written, folded = (ort_cpu_session(path, fold_weights=fold).run(None, feed) for fold in (False, True))
        outputs = len(entry["outputs"])
        for reference, got in zip(as_written[outputs:], folded[outputs:]):  # the float MatMul products
            assert np.abs(got - reference).max() <= 1e-5 * np.abs(reference).max(), entry["name"]
        for reference, got in zip(as_written[:outputs], folded[:outputs]):
            step = np.diff(np.unique(reference)).min()
            moved = np.abs(got - reference) > step / 2
            assert np.abs(got - reference).max() <= step * 1.001 and moved.mean() <= 0.005, entry["name"]


def test_packed_and_prefix_shared_logits_equal_one_prefill_per_request(bundle):
    """Several sequences sharing contexts, packed into common chunks with the contexts
    computed once: every logit equals, bit for bit, one prefill per sequence (mixed A8/A16
    graphs, a CPU-FP block, the shadow paths)."""
    _assert_packed_equals_one_prefill_per_request(BundleModel(bundle / "bundle"), context_lengths=(5, 21, 40), alone=37)


def test_packed_logits_equal_one_prefill_per_request_in_a_wide_chunk(bundle, tmp_path):
    """The same at chunk 64, where a short run's attention computes only the row tiles of
    its queries, not the chunk's 64 rows (runtime/subgraphs.py)."""
    export_bundle(bundle / "calib", tmp_path / "wide", chunk_size=64, progress=False)
    _assert_packed_equals_one_prefill_per_request(BundleModel(tmp_path / "wide"), context_lengths=(5, 30, 70, 100), alone=90)


def _assert_packed_equals_one_prefill_per_request(runtime: BundleModel, context_lengths: tuple[int, ...], alone: int) -> None:
    from quantkit.runtime.packing import prefix_tree

    generator = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, TINY_VOCAB, (n,), generator=generator).tolist() for n in context_lengths]
    sequences = [tuple(c + torch.randint(0, TINY_VOCAB, (k,), generator=generator).tolist()) for c in contexts for k in (1, 4, 9)]
    sequences.append(tuple(torch.randint(0, TINY_VOCAB, (alone,), generator=generator).tolist()))
    tree = prefix_tree(sequences)
    assert len(tree.segments) == len(contexts) * 4 + 1  # each context once, one segment per continuation
    wanted = {}
    for index, sequence in enumerate(sequences):
        for position in range(len(sequence)):
            segment, offset = tree.locate(index, position)
            wanted.setdefault(segment, set()).add(offset)
    wanted = {segment: sorted(offsets) for segment, offsets in wanted.items()}
    packed = runtime.run_packed(tree.segments, wanted)
    for index, sequence in enumerate(sequences):
        expected = runtime.prefill(torch.tensor(sequence))
        got = torch.stack([packed[s][wanted[s].index(o)] for s, o in (tree.locate(index, p) for p in range(len(sequence)))])
        assert torch.equal(got, expected), index

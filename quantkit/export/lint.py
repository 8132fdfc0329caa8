"""``quantkit lint BUNDLE``: find what would break the QNN conversion before a device does.

Mismatched encodings are the most common export failure users of AIMET and AI Hub
report, so every QDQ tensor is checked against its encoding and back. With ``qnn=True``
each NPU graph is also compiled and run on the QNN HTP backend with CPU fallback
disabled and, like ONNX Runtime's CPU provider, compared with the graph's float result
on real calibration inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantkit.runtime.bundle import bundle_problems

__all__ = ["LintReport", "lint_bundle", "QNN_HTP_OPS", "MIN_SQNR_DB", "SQNR_MARGIN_DB", "EXACT_SQNR_DB"]

# ONNX ops of our graphs that the QNN HTP backend executes (quantized node units).
QNN_HTP_OPS = {"QuantizeLinear", "DequantizeLinear", "MatMul", "Add", "Reshape", "ReduceMean"}  # the last two: block means of LPBQ offsets
# A graph fails lint --qnn when HTP's SQNR against the float reference is under the floor
# of its activation width, or more than SQNR_MARGIN_DB below ONNX Runtime CPU's while
# under EXACT_SQNR_DB (noise below 0.01% of the signal power counts as exact). Measured on
# SmolLM2 (auto bundle, chunk 64): A8 graphs HTP 27–39 dB, within 0.3 dB of CPU's; A16
# graphs HTP 45–56 dB where the CPU's exact int16 rounding gives 72–84 dB.
SQNR_MARGIN_DB = 3.0
EXACT_SQNR_DB = 40.0
MIN_SQNR_DB = {8: 20.0, 16: 40.0}
_SUPPORTED_OPSETS = range(13, 24)
_DTYPE_BITS = {3: 8, 2: 8, 6: 32, 5: 16, 4: 16, 22: 4, 21: 4}  # onnx TensorProto: INT8, UINT8, INT32, INT16, UINT16, INT4, UINT4
_REL_TOLERANCE = 1e-6


@dataclass
class LintReport:
    problems: list[str] = field(default_factory=list)
    sqnr_db: dict[str, float] = field(default_factory=dict)  # per graph, with --qnn: QNN HTP vs the float reference
    cpu_sqnr_db: dict[str, float] = field(default_factory=dict)  # ONNX Runtime CPU vs the float reference
    context_sqnr_db: dict[str, float] = field(default_factory=dict)  # with --qnn-context bundles: the EPContext model on QNN HTP vs the float reference
    integer_sqnr_db: dict[str, float] = field(default_factory=dict)  # A8 graphs: the runtime's integer kernels (--cpu-kernels integer) vs the float reference

    @property
    def ok(self) -> bool:
        return not self.problems


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOLERANCE * max(abs(a), abs(b), 1e-30)


def _check_encoding(problems: list[str], where: str, encoding: dict | None, scales: np.ndarray, zero_points: np.ndarray, bits: int) -> None:
    if encoding is None:
        problems.append(f"{where}: no encoding in encodings.json")
        return
    if encoding.get("bw") != bits:
        problems.append(f"{where}: encoding bit-width {encoding.get('bw')} but the graph stores {bits}-bit values")
    if encoding.get("dtype") != "INT":
        problems.append(f"{where}: encoding dtype {encoding.get('dtype')!r}, expected 'INT'")
    expected_type = "PER_TENSOR" if scales.size == 1 else "PER_CHANNEL"
    if encoding.get("enc_type") != expected_type:
        problems.append(f"{where}: encoding type {encoding.get('enc_type')!r}, the graph is {expected_type}")
    encoded_scales = np.asarray(encoding.get("scale", []), dtype=np.float64).reshape(-1)
    if encoded_scales.size != scales.size or not all(_close(a, b) for a, b in zip(encoded_scales, scales.reshape(-1))):
        problems.append(f"{where}: encoding scales differ from the graph's ({encoded_scales.size} vs {scales.size} values)")
    offsets = encoding.get("offset", [])
    if encoding.get("is_sym"):
        if np.any(zero_points != 0):
            problems.append(f"{where}: encoding is symmetric but the graph's zero point is not 0")
        if any(o != -(2 ** (bits - 1)) for o in offsets):
            problems.append(f"{where}: symmetric {bits}-bit encoding must have offset {-(2 ** (bits - 1))}, got {sorted(set(offsets))[:3]}")
    elif len(offsets) != scales.size:
        problems.append(f"{where}: {len(offsets)} offsets for {scales.size} scales")


def _check_lpbq_encoding(
    problems: list[str], where: str, encoding: dict | None, channel_scales: np.ndarray, block_integers: np.ndarray, block_size: int
) -> None:
    """An LPBQ weight (int4 codes, block scales = uint8 k [in / B, out] × per-channel s)
    against AIMET's 1.0.0 LPBQ entry: bw 8 (decompressed), compressed_bw 4, scale = s,
    per_block_int_scale = k as [out, in / B], block_size = B."""
    if encoding is None:
        problems.append(f"{where}: no encoding in encodings.json")
        return
    expected = {"enc_type": "LPBQ", "bw": 8, "compressed_bw": 4, "is_sym": True, "dtype": "INT", "block_size": block_size}
    for key, value in expected.items():
        if encoding.get(key) != value:
            problems.append(f"{where}: LPBQ encoding {key} {encoding.get(key)!r}, the graph needs {value!r}")
    encoded_scales = np.asarray(encoding.get("scale", []), dtype=np.float64).reshape(-1)
    if encoded_scales.size != channel_scales.size or not all(_close(a, b) for a, b in zip(encoded_scales, channel_scales.reshape(-1))):
        problems.append(f"{where}: LPBQ per-channel scales differ from the graph's")
    if list(encoding.get("per_block_int_scale", [])) != block_integers.T.astype(np.int64).reshape(-1).tolist():
        problems.append(f"{where}: LPBQ per-block integer scales differ from the graph's")
    if encoding.get("offset") and any(o != -128 for o in encoding["offset"]):
        problems.append(f"{where}: symmetric LPBQ encoding must have offset -128")


def _lint_graph(path: Path, entry: dict, activations: dict, params: dict, used: set, problems: list[str]) -> None:
    import onnx
    from onnx import numpy_helper

    name = entry["name"]
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx raises several types for a bad file
        problems.append(f"{name}: not a valid ONNX model ({error})")
        return
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets or opsets[0] not in _SUPPORTED_OPSETS:
        problems.append(
            f"{name}: opset {opsets} not in the range ONNX Runtime and onnxruntime-qnn accept ({_SUPPORTED_OPSETS.start}–{_SUPPORTED_OPSETS.stop - 1})"
        )
    if not 7 <= model.ir_version <= 11:
        problems.append(f"{name}: IR version {model.ir_version} not accepted by current ONNX Runtime (7–11)")
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            problems.append(f"{name}: {value.name} has a dynamic or unknown shape; NPU graphs need static shapes")
    for node in graph.node:
        if node.op_type not in QNN_HTP_OPS:
            problems.append(f"{name}: op {node.op_type} ({node.name or node.output[0]}) is not in the QNN HTP op set quantkit exports ({sorted(QNN_HTP_OPS)})")
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    element_types = {init.name: init.data_type for init in graph.initializer}
    scale_of = {}
    # LPBQ: a DequantizeLinear of uint8 block integers whose output is another DequantizeLinear's scale
    consumers_scale = {n.input[1] for n in graph.node if n.op_type == "DequantizeLinear"}
    block_scale_producers = {
        n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in consumers_scale and n.input[0] in initializers
    }
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            tensor = node.input[0]
            scales, zero_points = initializers.get(node.input[1]), initializers.get(node.input[2])
            bits = _DTYPE_BITS.get(element_types.get(node.input[2]), 0)
            used.add(tensor)
            scale_of[node.output[0]] = scales
            _check_encoding(problems, f"{name}: activation {tensor}", activations.get(tensor), np.asarray(scales), np.asarray(zero_points), bits)
        elif node.op_type == "DequantizeLinear" and node.input[0] in initializers and node.input[1] in block_scale_producers:
            tensor = node.input[0]  # an LPBQ weight: its scale comes from the block-scale DequantizeLinear
            producer = block_scale_producers[node.input[1]]
            used.add(tensor)
            if _DTYPE_BITS.get(element_types.get(tensor)) != 4:
                problems.append(f"{name}: LPBQ weight {tensor} is not 4-bit")
            block_size = next((a.i for a in node.attribute if a.name == "block_size"), 0)
            _check_lpbq_encoding(
                problems,
                f"{name}: parameter {tensor}",
                params.get(tensor),
                np.asarray(initializers[producer.input[1]]),
                np.asarray(initializers[producer.input[0]]),
                block_size,
            )
        elif node.op_type == "DequantizeLinear" and node.input[0] in initializers and node.output[0] not in block_scale_producers:
            tensor = node.input[0]
            scales, zero_points = initializers.get(node.input[1]), initializers.get(node.input[2])
            bits = _DTYPE_BITS.get(element_types.get(tensor), 0)
            used.add(tensor)
            _check_encoding(problems, f"{name}: parameter {tensor}", params.get(tensor), np.asarray(scales), np.asarray(zero_points), bits)
            if tensor.endswith(".bias") and bits != 32:
                problems.append(f"{name}: bias {tensor} is {bits}-bit; QNN expects INT32 biases")
    # INT32 bias scale must equal input scale × weight scale, channel by channel.
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".bias") and node.input[0] in initializers:
            weight = node.input[0][: -len(".bias")] + ".weight.scale"
            input_scale = next((initializers[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == entry["input"]), None)
            if weight in initializers and input_scale is not None:
                expected = np.asarray(input_scale) * initializers[weight]
                if not np.allclose(initializers[node.input[1]], expected, rtol=1e-5):
                    problems.append(f"{name}: bias {node.input[0]} scale ≠ input scale × weight scale")


def _loses_to(sqnr: float, baseline_sqnr: float) -> bool:
    """An executor's SQNR vs float more than SQNR_MARGIN_DB below the baseline executor's,
    while not itself exact (under EXACT_SQNR_DB)."""
    return sqnr < baseline_sqnr - SQNR_MARGIN_DB and sqnr < EXACT_SQNR_DB


def _run_qnn(folder: Path, manifest: dict, report: LintReport) -> None:
    """Each graph on QNN HTP (CPU fallback disabled) and on ONNX Runtime CPU as written,
    both compared with the graph's float reference on the stored calibration input; the
    A8 graphs also in the integer form the runtime runs on the CPU provider
    (``quantkit.runtime.integer_kernels``), held to the graph as written."""
    import torch
    from safetensors.torch import load_file

    from quantkit.export.bundle import CALIBRATION_INPUTS_FILE
    from quantkit.quant_primitives import sqnr_db
    from quantkit.runtime.npu import OrtGraph, records_from_graph
    from quantkit.runtime.sessions import cpu_session, qnn_htp_session

    inputs = load_file(str(folder / CALIBRATION_INPUTS_FILE))
    for entry in manifest["graphs"]:
        codes = inputs.get(entry["linears"][0])
        if codes is None:
            report.problems.append(f"{entry['name']}: no calibration input in {CALIBRATION_INPUTS_FILE}")
            continue
        records = records_from_graph(folder, entry)
        x = codes.float() * records[0].input_scale
        feed = {entry["input"]: x.numpy()}
        # The float reference: the graph's own dequantized input and weights, float
        # accumulation, no output requantization. Both executors requantize the output;
        # two valid roundings of one value differ by one step, which this comparison
        # does not flag — an executor that loses more than that does.
        reference = torch.cat([r.accumulate(x).flatten() for r in records])
        cpu = torch.from_numpy(np.concatenate([r.ravel() for r in cpu_session(folder / entry["file"]).run(None, feed)]))
        try:
            htp_outputs = qnn_htp_session(folder / entry["file"]).run(None, feed)
        except Exception as error:  # ONNX Runtime reports unsupported nodes as a generic failure
            report.problems.append(f"{entry['name']}: does not run on QNN HTP with CPU fallback disabled ({str(error).splitlines()[0]})")
            continue
        htp = torch.from_numpy(np.concatenate([h.ravel() for h in htp_outputs]))
        bits = records[0].bits
        report.sqnr_db[entry["name"]] = htp_sqnr = sqnr_db(reference, htp)
        if entry.get("qnn_context"):
            _check_context(folder, entry, feed, reference, htp_sqnr, bits, report)
        report.cpu_sqnr_db[entry["name"]] = cpu_sqnr = sqnr_db(reference, cpu)
        integer = OrtGraph(folder, entry, "cpu", threads=0)
        if integer.integer:
            integer_outputs = integer(x.reshape(-1, x.shape[-1]))
            report.integer_sqnr_db[entry["name"]] = integer_sqnr = sqnr_db(reference, torch.cat([y.flatten() for y in integer_outputs]))
            if _loses_to(integer_sqnr, cpu_sqnr):
                report.problems.append(
                    f"{entry['name']}: integer kernels' SQNR vs float {integer_sqnr:.1f} dB, more than {SQNR_MARGIN_DB:g} dB below the graph's as written ({cpu_sqnr:.1f} dB)"
                )
        if _loses_to(htp_sqnr, cpu_sqnr):
            report.problems.append(
                f"{entry['name']}: QNN HTP SQNR vs float {htp_sqnr:.1f} dB, more than {SQNR_MARGIN_DB:g} dB below ONNX Runtime CPU's {cpu_sqnr:.1f} dB"
            )
        if htp_sqnr < MIN_SQNR_DB[bits]:
            report.problems.append(f"{entry['name']}: QNN HTP SQNR vs float {htp_sqnr:.1f} dB < {MIN_SQNR_DB[bits]:g} dB, the floor for A{bits} graphs")


def _check_context(folder: Path, entry: dict, feed: dict, reference, htp_sqnr: float, bits: int, report: LintReport) -> None:
    """The graph's EPContext model (``export --qnn-context``), loaded as the device loads it,
    held to the QDQ graph's test: its SQNR vs the float reference at least the floor of its
    width and not more than SQNR_MARGIN_DB below the QDQ graph's on HTP."""
    import torch

    from quantkit.quant_primitives import sqnr_db
    from quantkit.runtime.sessions import qnn_htp_session

    name, context = entry["name"], entry["qnn_context"]
    try:
        outputs = qnn_htp_session(folder / context).run(None, feed)
    except Exception as error:  # ONNX Runtime reports a context it cannot load as a generic failure
        report.problems.append(
            f"{name}: {context} does not load on this QNN HTP backend ({str(error).splitlines()[0]}); export the bundle again with --qnn-context"
        )
        return
    report.context_sqnr_db[name] = context_sqnr = sqnr_db(reference, torch.from_numpy(np.concatenate([o.ravel() for o in outputs])))
    if _loses_to(context_sqnr, htp_sqnr) or context_sqnr < MIN_SQNR_DB[bits]:
        report.problems.append(
            f"{name}: {context} SQNR vs float {context_sqnr:.1f} dB where its QDQ graph on QNN HTP has {htp_sqnr:.1f} dB; "
            "the context binary does not compute this graph: export the bundle again with --qnn-context"
        )


def lint_bundle(folder: str | Path, qnn: bool = False, progress: bool = False) -> LintReport:
    """Every problem of the bundle at ``folder`` (empty when it is fine)."""
    folder = Path(folder)
    report = LintReport()
    manifest, problems = bundle_problems(folder)
    report.problems += problems
    if manifest is None:
        return report
    try:
        encodings = json.loads((folder / "encodings.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        report.problems.append(f"encodings.json: unreadable ({error})")
        return report
    if encodings.get("version") != "1.0.0":
        report.problems.append(f"encodings.json: version {encodings.get('version')!r}, expected '1.0.0'")
    activations = {e["name"]: e for e in encodings.get("activation_encodings", [])}
    params = {e["name"]: e for e in encodings.get("param_encodings", [])}
    used: set[str] = set()
    for entry in manifest.get("graphs", []):
        path = folder / entry["file"]
        if path.is_file():
            _lint_graph(path, entry, activations, params, used, report.problems)
    for name in sorted((set(activations) | set(params)) - used):
        report.problems.append(f"encodings.json: {name} names no quantized tensor of any NPU graph")
    if qnn and not report.problems:
        _run_qnn(folder, manifest, report)
    return report

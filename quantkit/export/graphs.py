"""QDQ ONNX graphs of the NPU subgraphs of a decoder block (arXiv 2407.05858 §3.2–3.4).

Each graph holds the Linears that read one activation tensor — q/k/v, o, gate/up, down —
with static shape [1, chunk, in_features], its activations int8 (A8, the paper's scheme)
or int16 (A16) as the precision plan says — HTP runs int8-in/int8-out and
int16-in/int16-out graphs with int8 weights, not int8-in/int16-out. The graph is a
serialisation of ``quantkit.runtime.qdq.QdqLinear`` records (b = 8 shown):

    input (float, already clipped at t on the CPU)
      → QuantizeLinear/DequantizeLinear  int8, scale t/127, zero point 0   (per tensor)
      → MatMul with DequantizeLinear(int8 or int4 weight [in, out], per-channel scales, axis 1)
               or, LPBQ: DequantizeLinear(int4 weight [in, out], block scales, axis 0, block_size B)
                         whose block scales = DequantizeLinear(uint8 k [in/B, out], per-channel s, axis 1)
      → [+ DequantizeLinear(int32 bias, scale s_x·s_w)]
      [LPBQ with block offsets: that MatMul → Q/DQ (s_p = PART_RANGE · s_y), plus
       Reshape [1, chunk, in/B, B] → Q/DQ (s_x) → ReduceMean → Q/DQ (s_m), the block means
       (once per graph) → MatMul with DequantizeLinear(int8 offsets [in/B, out], per-channel
       scales, axis 1; or int4) → Q/DQ (s_p); the two Added]
      → QuantizeLinear/DequantizeLinear  int8, scale = NPU-output clip / 127 (calibrated)
      → output (float; the CPU adds the shadow result, Eq. 1)

The graph boundaries fall where the CPU must act: attention (RoPE, softmax, KV cache),
the RMSNorms and residual adds (the residual stream carries massive activations that
INT8 cannot hold, and the shadow split needs the exact FP norm output), the SiLU·up
product, and the shadow add-back of every Linear input — hence 4 graphs a block.
Norms run on the CPU for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from quantkit.models.architecture import DecoderLayout
from quantkit.outlier_shadow.plan import ShadowPlan, SiteShadowPlan
from quantkit.outlier_shadow.simulated_linear import WeightCodes, deployed_record
from quantkit.precision.plan import GraphPrecision
from quantkit.runtime.bundle import graph_name
from quantkit.runtime.qdq import QuantizedWeight
from quantkit.weights.quantize import quantized_weights

__all__ = ["NpuGraph", "OPSET", "IR_VERSION", "build_site_graph"]

# The LPBQ weight form above is the one onnxruntime-qnn's HTP backend fuses into a
# blockwise-expansion MatMul (probed on 2.7.0: with 16-bit activations it loads with CPU
# fallback off; a plain blocked DequantizeLinear, INT4 with 8-bit activations, and LPBQ
# followed by a bias Add are all refused).
OPSET = 21  # QDQ with int16/int4 and per-axis DQ; accepted by ONNX Runtime and onnxruntime-qnn
IR_VERSION = 10


@dataclass
class NpuGraph:
    name: str  # e.g. "block03.qkv"
    block_index: int
    site: str  # first Linear of the shadow site
    model: onnx.ModelProto
    input_name: str
    output_names: list[str]
    activation_encodings: list[dict]  # AIMET 1.0.0 entries, names = tensors of this graph
    param_encodings: list[dict]


_ACTIVATION_DTYPES = {8: np.int8, 16: np.int16}


def _activation_encoding(name: str, scale: float, bits: int) -> dict:
    return {"name": name, "dtype": "INT", "bw": bits, "is_sym": True, "enc_type": "PER_TENSOR", "scale": [scale], "offset": [-(2 ** (bits - 1))]}


def _per_channel_encoding(name: str, scales: np.ndarray, bits: int) -> dict:
    return {
        "name": name,
        "dtype": "INT",
        "bw": bits,
        "is_sym": True,
        "enc_type": "PER_CHANNEL",
        "scale": [float(s) for s in scales],
        "offset": [-(2 ** (bits - 1))] * len(scales),
    }


def _int4_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    """An ONNX INT4 initializer: two signed 4-bit values a byte, the first in the low nibble."""
    flat = values.astype(np.int8).flatten()
    nibbles = (flat & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True)


def _offset_nodes(offsets_name: str, weight: QuantizedWeight) -> tuple[list, list, dict]:
    """The DequantizeLinear producing ``<offsets_name>.dq`` [in / B, out] (the block-offset
    weight O), its initializers and its AIMET 1.0.0 encoding: int8 or int4 codes, a scale
    per output channel (``runtime.qdq.OFFSET_FORMATS``)."""
    codes = weight.offset_codes.T.contiguous().numpy().astype(np.int8)  # [in / B, out]
    scales = weight.offset_scales.numpy().astype(np.float32)
    out_features = codes.shape[1]
    if weight.offset_bits == 4:
        initializers = [_int4_tensor(codes, offsets_name), _int4_tensor(np.zeros(out_features, dtype=np.int8), f"{offsets_name}.zero_point")]
    else:
        initializers = [
            numpy_helper.from_array(codes, offsets_name),
            numpy_helper.from_array(np.zeros(out_features, dtype=np.int8), f"{offsets_name}.zero_point"),
        ]
    initializers.append(numpy_helper.from_array(scales, f"{offsets_name}.scale"))
    node = helper.make_node("DequantizeLinear", [offsets_name, f"{offsets_name}.scale", f"{offsets_name}.zero_point"], [f"{offsets_name}.dq"], axis=1)
    return [node], initializers, _per_channel_encoding(offsets_name, scales, weight.offset_bits)


def _weight_nodes(weight_name: str, weight: QuantizedWeight) -> tuple[list, list, dict]:
    """DequantizeLinear node(s) producing ``<weight_name>.dq`` [in, out], their
    initializers, and the weight's AIMET 1.0.0 encoding."""
    codes = weight.codes.T.contiguous().numpy()  # [in, out]
    scales = weight.scales.numpy().astype(np.float32)
    out_features = codes.shape[1]
    if weight.bits == 8:
        initializers = [
            numpy_helper.from_array(codes, weight_name),
            numpy_helper.from_array(np.zeros(out_features, dtype=np.int8), f"{weight_name}.zero_point"),
        ]
    else:
        zero_shape = [out_features] if weight.block_size is None else [codes.shape[0] // weight.block_size, out_features]
        initializers = [_int4_tensor(codes, weight_name), _int4_tensor(np.zeros(zero_shape, dtype=np.int8), f"{weight_name}.zero_point")]
    if weight.block_size is None:
        initializers.append(numpy_helper.from_array(scales, f"{weight_name}.scale"))
        nodes = [helper.make_node("DequantizeLinear", [weight_name, f"{weight_name}.scale", f"{weight_name}.zero_point"], [f"{weight_name}.dq"], axis=1)]
        return nodes, initializers, _per_channel_encoding(weight_name, scales, weight.bits)
    block_integers = weight.block_scales.T.contiguous().numpy().astype(np.uint8)  # [in / B, out]
    initializers += [
        numpy_helper.from_array(block_integers, f"{weight_name}.block_scales"),
        numpy_helper.from_array(scales, f"{weight_name}.channel_scale"),
        numpy_helper.from_array(np.zeros(out_features, dtype=np.uint8), f"{weight_name}.block_scales.zero_point"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [f"{weight_name}.block_scales", f"{weight_name}.channel_scale", f"{weight_name}.block_scales.zero_point"],
            [f"{weight_name}.scale"],
            axis=1,
        ),
        helper.make_node(
            "DequantizeLinear", [weight_name, f"{weight_name}.scale", f"{weight_name}.zero_point"], [f"{weight_name}.dq"], axis=0, block_size=weight.block_size
        ),
    ]
    encoding = {
        "name": weight_name,
        "dtype": "INT",
        "bw": 8,  # AIMET's LPBQ entry: the decompressed grid, 4-bit codes
        "compressed_bw": 4,
        "is_sym": True,
        "enc_type": "LPBQ",
        "block_size": weight.block_size,
        "scale": [float(v) for v in scales],
        "offset": [-128] * out_features,
        "per_block_int_scale": weight.block_scales.to(torch.int32).flatten().tolist(),  # [out, in / B]
    }
    return nodes, initializers, encoding


def build_site_graph(
    layout: DecoderLayout, plan: ShadowPlan, precision: GraphPrecision, site: SiteShadowPlan, chunk_size: int, weights: WeightCodes | None = None
) -> NpuGraph:
    """The QDQ graph of one shadow site (Linears sharing an input) for ``chunk_size``
    tokens: a serialisation of the deployed records (``quantkit.runtime.qdq.QdqLinear``)
    at the graph's input and output bit-widths — the arithmetic calibration measured."""
    name = graph_name(site.block_index, site.linear_names[0])
    input_name = f"{site.linear_names[0]}.input"  # shared by every Linear of the site
    bits, output_bits = precision.activation_bits, precision.out_bits
    activation_dtype = _ACTIVATION_DTYPES[bits]
    codes = (
        weights
        if weights is not None
        else quantized_weights(layout, site.linear_names, plan.config.weight_scale_rule, precision.weight_bits, precision.weight_block_size)
    )
    records = {
        n: deployed_record(layout.linear(n), n, site, bits, precision.output_clip(n), codes[n], precision.means_clip_, output_bits) for n in site.linear_names
    }
    input_scale = records[site.linear_names[0]].input_scale
    nodes, initializers = [], []
    activation_encodings = [_activation_encoding(input_name, input_scale, bits)]
    param_encodings = []

    def scalar(value, dtype, tensor_name):
        initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), tensor_name))
        return tensor_name

    def requantized(tensor: str, scale: float, scale_name: str, width: int = bits) -> str:
        """``tensor`` through QuantizeLinear/DequantizeLinear at ``scale``, whose initializer
        ``scale_name`` already exists (an activation encoding too), at ``width`` bits."""
        zero_point = f"{input_name}.zero_point" if width == bits else output_zero_point
        activation_encodings.append(_activation_encoding(tensor, scale, width))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, scale_name, zero_point], [f"{tensor}.q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}.q", scale_name, zero_point], [f"{tensor}.dq"]))
        return f"{tensor}.dq"

    nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [input_name, scalar(input_scale, np.float32, f"{input_name}.scale"), scalar(0, activation_dtype, f"{input_name}.zero_point")],
            [f"{input_name}.q"],
        )
    )
    nodes.append(helper.make_node("DequantizeLinear", [f"{input_name}.q", f"{input_name}.scale", f"{input_name}.zero_point"], [f"{input_name}.dq"]))
    # outputs wider than the input (int8 MACs, int16 results) get a zero point of their own type
    output_zero_point = f"{input_name}.zero_point" if output_bits == bits else scalar(0, _ACTIVATION_DTYPES[output_bits], f"{input_name}.output_zero_point")
    offset_blocks = {record.weight.block_size for record in records.values() if record.weight.has_offsets}
    assert len(offset_blocks) <= 1, "one LPBQ block size per graph"
    means = None
    if offset_blocks:  # the block means of the quantized input, shared by the site's Linears
        block_size = offset_blocks.pop()
        shape = scalar(np.array([1, chunk_size, site.num_channels // block_size, block_size], dtype=np.int64), np.int64, f"{input_name}.blocks.shape")
        nodes.append(helper.make_node("Reshape", [f"{input_name}.dq", shape], [f"{input_name}.blocks"]))
        blocks = requantized(f"{input_name}.blocks", input_scale, f"{input_name}.scale")
        nodes.append(
            helper.make_node(
                "ReduceMean", [blocks, scalar(np.array([-1], dtype=np.int64), np.int64, f"{input_name}.blocks.axes")], [f"{input_name}.block_means"], keepdims=0
            )
        )
        means_scale = records[next(n for n, r in records.items() if r.weight.has_offsets)].block_means_scale
        means = requantized(f"{input_name}.block_means", means_scale, scalar(means_scale, np.float32, f"{input_name}.block_means.scale"))
    outputs = []
    for linear_name, record in records.items():
        weight_name = f"{linear_name}.weight"
        weight_nodes, weight_initializers, weight_encoding = _weight_nodes(weight_name, record.weight)
        nodes += weight_nodes
        initializers += weight_initializers
        param_encodings.append(weight_encoding)
        product = f"{linear_name}.matmul"
        nodes.append(helper.make_node("MatMul", [f"{input_name}.dq", f"{weight_name}.dq"], [product]))
        if record.weight.has_offsets:
            offsets_name = f"{linear_name}.offsets"
            offset_nodes, offset_initializers, offset_encoding = _offset_nodes(offsets_name, record.weight)
            nodes += offset_nodes
            initializers += offset_initializers
            param_encodings.append(offset_encoding)
            nodes.append(helper.make_node("MatMul", [means, f"{offsets_name}.dq"], [f"{linear_name}.offset_matmul"]))
            part_scale = scalar(record.part_scale, np.float32, f"{linear_name}.part.scale")
            codes_part = requantized(product, record.part_scale, part_scale, output_bits)
            offsets_part = requantized(f"{linear_name}.offset_matmul", record.part_scale, part_scale, output_bits)
            nodes.append(helper.make_node("Add", [codes_part, offsets_part], [f"{linear_name}.offset_sum"]))
            product = f"{linear_name}.offset_sum"
        if record.bias_codes is not None:
            bias_name = f"{linear_name}.bias"
            bias_scales = record.bias_scales.numpy().astype(np.float32)
            initializers += [
                numpy_helper.from_array(record.bias_codes.numpy().astype(np.int32), bias_name),
                numpy_helper.from_array(bias_scales, f"{bias_name}.scale"),
                numpy_helper.from_array(np.zeros(len(bias_scales), dtype=np.int32), f"{bias_name}.zero_point"),
            ]
            param_encodings.append(_per_channel_encoding(bias_name, bias_scales, 32))
            nodes.append(helper.make_node("DequantizeLinear", [bias_name, f"{bias_name}.scale", f"{bias_name}.zero_point"], [f"{bias_name}.dq"], axis=0))
            nodes.append(helper.make_node("Add", [product, f"{bias_name}.dq"], [f"{linear_name}.biased"]))
            product = f"{linear_name}.biased"
        output_scale = record.output_scale
        output_name = f"{linear_name}.output"
        activation_encodings.append(_activation_encoding(product, output_scale, output_bits))
        nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [product, scalar(output_scale, np.float32, f"{output_name}.scale"), scalar(0, _ACTIVATION_DTYPES[output_bits], f"{output_name}.zero_point")],
                [f"{output_name}.q"],
            )
        )
        nodes.append(helper.make_node("DequantizeLinear", [f"{output_name}.q", f"{output_name}.scale", f"{output_name}.zero_point"], [output_name]))
        outputs.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, chunk_size, record.out_features]))
    graph = helper.make_graph(
        nodes, name.replace(".", "_"), [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, chunk_size, site.num_channels])], outputs, initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantkit")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return NpuGraph(
        name=name,
        block_index=site.block_index,
        site=site.linear_names[0],
        model=model,
        input_name=input_name,
        output_names=[o.name for o in outputs],
        activation_encodings=activation_encodings,
        param_encodings=param_encodings,
    )

"""Integer kernels for the A8 graphs on a workstation CPU (the stand-in NPU of ``npu="cpu"``).

A bundle graph as written (``quantkit.export.graphs``) dequantizes its int8 weights and
multiplies in float; ONNX Runtime's CPU provider runs it so, as a float GEMM. The Hexagon
NPU instead multiplies the int8 codes and accumulates in int32. This module rewrites an
A8 graph with int8 per-channel weights into that integer form, from its records
(``quantkit.runtime.qdq.QdqLinear``, read back from the graph's initializers):

    q_x = clamp(round(x / s_x), −128, 127) + 128                 (QuantizeLinear, uint8)
    acc = Σ_i (q_x[i] − 128) · (codes_W[j, i] + 128 − 128)        (exact, int32)
    y   = acc · (s_x · s_W[j]) + codes_b[j] · s_b[j]             (MatMulIntegerToFloat)
    out = clamp(round(y / s_y), …) · s_y                         (QuantizeLinear/DequantizeLinear)

— the same q_x, codes and output grid as the graph; only the float summation of the
graph's MatMul becomes an exact integer sum, so an output on a rounding boundary may land
one step away (tests/runtime/test_integer_kernels.py bounds how often).

Both operands are uint8 with zero point 128, not int8: ONNX Runtime's x86 kernels take
uint8 activations, and with int8 weights its AVX2 kernel (no VNNI) sums pairs of
products in int16, which saturates — 786 k of 786 k outputs wrong on full-range random
codes against an exact sum on this machine, none with uint8 weights. ``com.microsoft``'s
MatMulIntegerToFloat is ONNX Runtime's own fused int8 GEMM with float rescale and bias; no
other library runs a static-scale int8 Linear on an x86 CPU (torch's ``_int_mm`` took
713 ms where this takes 7 ms for one gate/up graph of 256 tokens).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quantkit.runtime.qdq import QdqLinear

__all__ = ["runs_on_integer_kernels", "integer_model"]

_ZERO_POINT = 128  # uint8 codes of both operands: the int8 code + 128
_OUTPUT_TYPES = {8: (np.int8, TensorProto.INT8), 16: (np.int16, TensorProto.INT16)}
_OPSET, _IR_VERSION = 21, 10


def runs_on_integer_kernels(records: list[QdqLinear]) -> bool:
    """Whether every Linear of a graph is int8 × int8 with per-channel scales (A8, W8):
    the graphs this module rewrites. A16 graphs and 4-bit weights keep their float form."""
    return all(r.bits == 8 and r.weight.bits == 8 and r.weight.block_size is None and r.output_scale is not None for r in records)


def integer_model(records: list[QdqLinear], input_name: str, output_names: list[str], input_shape: list[int]) -> onnx.ModelProto:
    """The integer form (module docstring) of one A8 graph: its input, output names and
    static shape as the graph has them, one MatMulIntegerToFloat per Linear."""
    if not runs_on_integer_kernels(records):
        raise ValueError(f"{input_name}: integer kernels run int8 activations with int8 per-channel weights only")
    initializers = [
        numpy_helper.from_array(np.array(records[0].input_scale, dtype=np.float32), "x.scale"),
        numpy_helper.from_array(np.array(_ZERO_POINT, dtype=np.uint8), "zero_point.u8"),
    ]
    nodes = [helper.make_node("QuantizeLinear", [input_name, "x.scale", "zero_point.u8"], ["x.q"])]
    outputs = []
    for index, (record, output_name) in enumerate(zip(records, output_names, strict=True)):
        weight = record.weight
        codes = weight.codes.numpy().astype(np.int16).T + _ZERO_POINT  # [in, out]
        prefix = f"linear{index}"
        initializers += [
            numpy_helper.from_array(codes.astype(np.uint8), f"{prefix}.weight"),
            numpy_helper.from_array(weight.scales.numpy().astype(np.float32), f"{prefix}.weight.scale"),
        ]
        inputs = ["x.q", f"{prefix}.weight", "x.scale", f"{prefix}.weight.scale", "zero_point.u8", "zero_point.u8"]
        if record.bias_codes is not None:
            bias = record.bias_codes.float() * record.bias_scales.float()  # DequantizeLinear of the int32 bias
            initializers.append(numpy_helper.from_array(bias.numpy(), f"{prefix}.bias"))
            inputs.append(f"{prefix}.bias")
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [f"{prefix}.y"], domain="com.microsoft"))
        dtype, onnx_type = _OUTPUT_TYPES[record.output_bits or record.bits]
        initializers += [
            numpy_helper.from_array(np.array(record.output_scale, dtype=np.float32), f"{prefix}.output.scale"),
            numpy_helper.from_array(np.array(0, dtype=dtype), f"{prefix}.output.zero_point"),
        ]
        output_grid = [f"{prefix}.output.scale", f"{prefix}.output.zero_point"]
        nodes.append(helper.make_node("QuantizeLinear", [f"{prefix}.y", *output_grid], [f"{prefix}.y.q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}.y.q", *output_grid], [output_name]))
        outputs.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [*input_shape[:-1], codes.shape[1]]))
    graph = helper.make_graph(nodes, "integer", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model

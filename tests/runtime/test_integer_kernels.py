"""The integer form of the A8 graphs (runtime/integer_kernels.py): its int32 sums against
exact integer arithmetic (tests/runtime/test_engine.py runs it against the graphs as written)."""

import numpy as np
import onnx
import pytest
import torch
from quantkit.runtime.integer_kernels import integer_model, runs_on_integer_kernels
from quantkit.runtime.qdq import QdqLinear, QuantizedWeight
from quantkit.runtime.sessions import ort_cpu_session


def _full_range_record(in_features=96, out_features=40, seed=0) -> QdqLinear:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    scales = torch.rand(out_features, generator=generator) * 0.01 + 0.001
    bias_codes = torch.randint(-5000, 5000, (out_features,), generator=generator, dtype=torch.int32)
    return QdqLinear(QuantizedWeight(codes, scales), 0.05, 1.0, 8, bias_codes, (0.05 * scales.double()).float(), output_bits=8)


def test_int32_sums_are_exact_on_full_range_codes():
    """Codes at the ends of the int8 range: an int16 pair sum (x86 AVX2 u8×s8) would
    saturate; the integer form's product equals the exact integer sum, rescaled."""
    record = _full_range_record()
    model = integer_model([record], "x", ["y"], [1, 8, 96])
    model.graph.output.append(onnx.helper.make_tensor_value_info("linear0.y", onnx.TensorProto.FLOAT, None))  # before the output's Q/DQ
    codes_x = torch.randint(-128, 128, (1, 8, 96), generator=torch.Generator().manual_seed(1)).double()
    codes_x[..., :48] = 127  # runs of the largest codes
    x = (codes_x * record.input_scale).float().numpy()
    _, product = ort_cpu_session(model.SerializeToString()).run(None, {"x": x})
    accumulator = codes_x[0] @ record.weight.codes.double().T + record.bias_codes.double()  # exact in float64
    expected = accumulator * record.input_scale * record.weight.scales.double()
    np.testing.assert_allclose(product[0], expected.numpy(), rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_only_a8_graphs_with_8_bit_weights_are_rewritten():
    record = _full_range_record()
    assert runs_on_integer_kernels([record])
    a16 = QdqLinear(record.weight, record.input_scale, record.output_scale, 16, output_bits=16)
    assert not runs_on_integer_kernels([record, a16])
    with pytest.raises(ValueError, match="int8 activations with int8 per-channel weights only"):
        integer_model([a16], "x", ["y"], [1, 8, 96])

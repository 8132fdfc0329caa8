import torch

from quantkit.baselines.llm_int8 import LLMInt8Linear
from quantkit.quant_primitives import sqnr_db


def test_outlier_columns_run_exactly_in_fp():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8)
    x = torch.zeros(4, 5, 32)
    x[..., 7] = 20.0 * torch.randn(4, 5)  # only an outlier column
    assert torch.allclose(LLMInt8Linear(linear)(x), linear(x), atol=1e-5)


def test_regular_part_is_vector_wise_int8():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 16, bias=False)
    x = torch.randn(3, 10, 64)
    x[..., 5] *= 30.0
    layer = LLMInt8Linear(linear, threshold=6.0)
    reference = linear(x)
    assert sqnr_db(reference, layer(x)) > 35.0  # INT8 with per-token scales, outliers exact
    # A threshold above every value keeps no FP column: the outlier channel then
    # stretches each token's INT8 range and the error grows.
    assert sqnr_db(reference, LLMInt8Linear(linear, threshold=1e9)(x)) < sqnr_db(reference, layer(x))

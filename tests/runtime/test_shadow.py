"""Eq. 1 of the shadow path (runtime/shadow.py): the split, the sparse shadow product and
the sum, against plain dense references."""

import pytest
import torch
from quantkit.runtime.shadow import combine, outlier_product, split_outliers


def _activation_with_outliers(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 64, 32)
    x[..., 7] *= 30.0
    x[0, 3, 11] = 55.0
    return x


def test_eq1_split_is_exact():
    x = _activation_with_outliers()
    clipped, outliers = split_outliers(x, 2.5)
    assert torch.equal(clipped + outliers, x)
    assert clipped.abs().max() <= 2.5
    assert torch.equal(outliers != 0, x.abs() > 2.5)


def test_eq1_split_sends_the_sink_rows_whole_to_the_shadow_path():
    x = _activation_with_outliers()
    sink = torch.arange(x.shape[1]) < 1
    clipped, outliers = split_outliers(x, 2.5, sink)
    assert torch.equal(clipped + outliers, x)
    assert torch.equal(clipped[:, 0], torch.zeros_like(x[:, 0])) and torch.equal(outliers[:, 0], x[:, 0])
    plain_clipped, plain_outliers = split_outliers(x, 2.5)
    assert torch.equal(clipped[:, 1:], plain_clipped[:, 1:]) and torch.equal(outliers[:, 1:], plain_outliers[:, 1:])


def test_outlier_product_and_combine_equal_the_dense_sum():
    """combine(y, (C, z), x_out·Wᵀ) = y with columns C replaced by z's sum into them, plus x_out·Wᵀ."""
    x = _activation_with_outliers().reshape(-1, 32)
    torch.manual_seed(1)
    weight = torch.randn(16, 32)
    _, excess = split_outliers(x, 2.5)
    asked = []
    product, count = outlier_product(excess, lambda active: asked.append(active) or weight.T[active])
    assert count == int(excess.ne(0).sum())
    assert torch.equal(asked[0], torch.nonzero(excess.ne(0).any(dim=0)).flatten())  # only the channels holding outliers
    torch.testing.assert_close(product, excess @ weight.T, rtol=1e-6, atol=1e-5)
    npu = torch.randn(x.shape[0], 16)
    channels, values = torch.tensor([2, 9]), torch.randn(x.shape[0], 2)
    expected = npu.clone()
    expected[:, channels] += values
    assert torch.equal(combine(npu, (channels, values), product), expected + product)
    assert combine(npu, None, None) is npu
    assert outlier_product(torch.zeros(4, 32), lambda active: weight.T[active]) is None


def test_cold_columns_read_the_rows_asked_for(tmp_path):
    from quantkit.runtime.shadow import ColdColumns
    from safetensors.torch import save_file

    tensors = {"a.cold": torch.randn(9, 5), "b.cold": torch.randn(6, 3).half()}
    save_file(tensors, str(tmp_path / "cold.safetensors"))
    cold = ColdColumns(tmp_path / "cold.safetensors")
    for name, tensor in tensors.items():
        for rows in ([0], [2, 3, 4], [3, 1, 2, 0], [1, 1], list(range(tensor.shape[0])), []):
            got = cold.rows(name, torch.tensor(rows, dtype=torch.long))
            assert got.dtype == torch.float32 and torch.equal(got, tensor[rows].float()), (name, rows)
    data = (tmp_path / "cold.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-8])  # the last rows of the last tensor missing
    last = max(tensors, key=lambda n: data.index(n.encode()))
    with pytest.raises(ValueError, match="truncated"):
        ColdColumns(tmp_path / "short.safetensors").rows(last, torch.arange(tensors[last].shape[0]))

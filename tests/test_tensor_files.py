import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from quantkit.tensor_files import PendingTensor, save_tensors_streaming


def test_written_file_reads_back_with_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "codes": torch.randint(-128, 127, (7,), dtype=torch.int8),
        "half": torch.randn(2, 3, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "transposed": torch.randn(4, 6).T,  # not contiguous: written in its logical order
    }
    made = []
    lazy = PendingTensor((6, 2), torch.float32, lambda: made.append(1) or torch.arange(12.0).reshape(6, 2))
    save_tensors_streaming({**tensors, "lazy": lazy}, tmp_path / "t.safetensors", metadata={"kind": "test"})
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert sorted(loaded) == sorted([*tensors, "lazy"])
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert torch.equal(loaded["lazy"], torch.arange(12.0).reshape(6, 2)) and made == [1]
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as handle:
        assert handle.metadata() == {"kind": "test"}


def test_a_tensor_unlike_its_announcement_is_refused(tmp_path):
    with pytest.raises(ValueError, match="announced"):
        save_tensors_streaming({"x": PendingTensor((2, 2), torch.float32, lambda: torch.zeros(2, 3))}, tmp_path / "t.safetensors")

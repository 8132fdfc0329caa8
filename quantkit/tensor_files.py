"""Write a safetensors file one tensor at a time.

Why our own writer: ``safetensors.torch.save_file`` turns every tensor into ``bytes``
before it writes the first one, so a file of N tensors holds all N (and their bytes) in
memory at once. A bundle's cold shadow columns are an FP32 copy of every NPU weight
(3.8 GB for a 1B-parameter model), made column-transposed from the model's weights: with
``save_file`` the export held them twice on top of the model. The format is small
enough to write tensor by tensor — an 8-byte little-endian header length, a JSON header
(dtype, shape and byte range of each tensor, space-padded to a multiple of 8 bytes), then
the tensors' bytes back to back — and the files are read by the safetensors library like
any other (``tests/test_tensor_files.py`` reads them back with it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PendingTensor", "save_tensors_streaming"]

# torch dtype → the safetensors dtype name and its size in bytes
_DTYPES = {
    torch.float64: ("F64", 8),
    torch.float32: ("F32", 4),
    torch.float16: ("F16", 2),
    torch.bfloat16: ("BF16", 2),
    torch.int64: ("I64", 8),
    torch.int32: ("I32", 4),
    torch.int16: ("I16", 2),
    torch.int8: ("I8", 1),
    torch.uint8: ("U8", 1),
    torch.bool: ("BOOL", 1),
}


@dataclass(frozen=True)
class PendingTensor:
    """A tensor made only when it is written: its shape and dtype go into the header first."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> PendingTensor:
        return cls(tuple(tensor.shape), tensor.dtype, lambda: tensor)


def save_tensors_streaming(tensors: dict[str, torch.Tensor | PendingTensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to the safetensors file ``path``, making and writing one at a time:
    at most one made tensor is alive at once (a ``PendingTensor``'s ``make`` is called just
    before its bytes are written and dropped after)."""
    pending = {name: value if isinstance(value, PendingTensor) else PendingTensor.of(value) for name, value in tensors.items()}
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, tensor in pending.items():
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} has no safetensors name here; expected one of {sorted(str(d) for d in _DTYPES)}")
        dtype, itemsize = _DTYPES[tensor.dtype]
        size = math.prod(tensor.shape) * itemsize
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for name, tensor in pending.items():
            made = tensor.make().detach().cpu().contiguous()
            if tuple(made.shape) != tuple(tensor.shape) or made.dtype != tensor.dtype:
                raise ValueError(f"{name}: made a {made.dtype} tensor of shape {tuple(made.shape)}, announced {tensor.dtype} {tuple(tensor.shape)}")
            file.write(memoryview(made.reshape(-1).view(torch.uint8).numpy()))  # the tensor's own bytes, no copy
            del made

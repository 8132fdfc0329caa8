"""The NPU executors: one bundle graph = the QDQ Linears reading one activation.

- :class:`OrtGraph` runs the graph file with ONNX Runtime — the CPU provider here, or
  the QNN HTP backend with CPU fallback disabled (``npu="qnn"``) — at the graph's static
  shape [1, chunk, in]; a shorter input is zero-padded and the outputs cut back.
- :class:`QdqGraph` is the same arithmetic in torch for any number of tokens, read from
  the graph's initializers. Decode uses it: one token at a time does not fit a static
  chunk graph, and llm.npu decodes on the CPU (§3.1).

QDQ arithmetic (per Linear):  q = clamp(round(x / s_x), −2^(b−1), 2^(b−1)−1) · s_x,
y = q · (W_int8 · s_w)ᵀ + b,  output = clamp(round(y / s_y), …) · s_y.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["OrtGraph", "QdqGraph", "ort_cpu_session"]


def ort_cpu_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session standing in for the NPU. ``threads=1`` runs the graph on
    the calling thread (the NPU worker): one session per graph, each with its own spinning
    thread pool, would starve the CPU worker's torch ops."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ONNX Runtime 1.31's extended QDQ fusions break QDQ MatMul + INT32 bias graphs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OrtGraph:
    def __init__(self, folder: Path, entry: dict, npu: str, threads: int = 1):
        self.entry = entry
        self.input_name = entry["input"]
        self.chunk_size = entry["input_shape"][1]
        path = folder / entry["file"]
        if npu == "qnn":
            from quantkit.export.qnn import qnn_htp_session

            self.session = qnn_htp_session(path)
        else:
            self.session = ort_cpu_session(path, threads)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        length = x.shape[0]
        if length > self.chunk_size:
            raise ValueError(f"{self.entry['name']}: {length} tokens, the graph's static chunk is {self.chunk_size}")
        padded = torch.zeros(1, self.chunk_size, x.shape[-1]) if length < self.chunk_size else None
        if padded is not None:
            padded[0, :length] = x
            feed = padded.numpy()
        else:
            feed = x.float().contiguous().numpy()[None]
        outputs = self.session.run(None, {self.input_name: feed})
        return [torch.from_numpy(np.asarray(y))[0, :length] for y in outputs]


def _fake_quantize(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), low, high) * scale


class QdqGraph:
    """torch twin of a bundle graph (same initializers, same rounding: half to even)."""

    def __init__(self, folder: Path, entry: dict, activation_bits: int):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(folder / entry["file"]))
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.bits = activation_bits
        self.input_scale = float(values[f"{entry['input']}.scale"])
        self.linears = []
        for name in entry["linears"]:
            codes = torch.from_numpy(values[f"{name}.weight"].astype(np.float32))  # [in, out]
            weight = (codes * torch.from_numpy(values[f"{name}.weight.scale"].copy())).T.contiguous()  # [out, in]
            bias = None
            if f"{name}.bias" in values:
                bias = torch.from_numpy(values[f"{name}.bias"].astype(np.float32) * values[f"{name}.bias.scale"])
            self.linears.append((weight, bias, float(values[f"{name}.output.scale"])))

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        q = _fake_quantize(x, self.input_scale, self.bits)
        return [_fake_quantize(torch.nn.functional.linear(q, weight, bias), output_scale, self.bits) for weight, bias, output_scale in self.linears]

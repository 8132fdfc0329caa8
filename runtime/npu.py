"""The NPU executors: one bundle graph = the QDQ Linears reading one activation.

- :class:`OrtGraph` runs the graph with ONNX Runtime at its static shape [1, chunk, in]
  (a shorter input is zero-padded and the outputs cut back): on the QNN HTP backend with
  CPU fallback disabled (``npu="qnn"``), or on the CPU provider standing in for the NPU
  (``npu="cpu"``) with one of the ``CPU_KERNELS``:

  - ``"integer"`` (default): the A8 graphs rewritten to int8 GEMMs with int32 sums, as
    the NPU computes them (``quantkit.runtime.integer_kernels``), the others with their
    weights folded to float (:func:`~quantkit.runtime.sessions.ort_cpu_session`);
  - ``"qdq"``: the graph file exactly as written, every weight dequantized at every run
    and multiplied in float — the reference ``lint`` compares against.

- :class:`QdqGraph` is the same arithmetic in torch for any number of tokens: the
  graph's :class:`~quantkit.runtime.qdq.QdqLinear` records read back from its
  initializers (the definition calibration measured with). Decode uses it: one token at
  a time does not fit a static chunk graph, and llm.npu decodes on the CPU (§3.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from quantkit.runtime.integer_kernels import integer_model, runs_on_integer_kernels
from quantkit.runtime.qdq import QdqLinear, QuantizedWeight
from quantkit.runtime.sessions import CPU_KERNELS, ort_cpu_session, qnn_htp_session, qnn_target_options

__all__ = ["OrtGraph", "QdqGraph", "records_from_graph"]


class OrtGraph:
    """One bundle graph run with ONNX Runtime (module docstring); ``kernels`` applies to ``npu="cpu"``.
    ``integer`` says whether the graph runs on integer kernels."""

    def __init__(
        self, folder: Path, entry: dict, npu: str, threads: int = 1, kernels: str = "integer", qnn_target: dict | None = None, qnn_contexts: bool = True
    ):
        if kernels not in CPU_KERNELS:
            raise ValueError(f"kernels: got {kernels!r}, expected one of {', '.join(CPU_KERNELS)}")
        self.entry = entry
        self.input_name = entry["input"]
        self.chunk_size = entry["input_shape"][1]
        path = folder / entry["file"]
        if npu == "qnn":
            # A bundle exported with --qnn-context holds each graph compiled for its target
            # (the manifest's qnn_target): its EPContext model is loaded as it is on the
            # device, nothing compiled here. Otherwise the QDQ graph is compiled now, for that
            # target where the bundle names one (the same binary: the same outputs).
            self.from_context = qnn_contexts and bool(entry.get("qnn_context"))
            self.source = folder / entry["qnn_context"] if self.from_context else path
            target = qnn_target or {}
            self.session = qnn_htp_session(self.source, None if self.from_context else qnn_target_options(target.get("soc_model"), target.get("htp_arch")))
            self.integer = False
        else:
            self.from_context, self.source = False, path
            records = records_from_graph(folder, entry) if kernels == "integer" else None
            self.integer = records is not None and runs_on_integer_kernels(records)
            if self.integer:
                model = integer_model(records, self.input_name, entry["outputs"], entry["input_shape"])
                self.session = ort_cpu_session(model.SerializeToString(), threads)
            else:
                self.session = ort_cpu_session(path, threads, fold_weights=kernels == "integer")

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


_BITS_OF_ZERO_POINT = {np.dtype(np.int8): 8, np.dtype(np.int16): 16}


def _weight_from_graph(values: dict[str, np.ndarray], linear_name: str) -> QuantizedWeight:
    """The QuantizedWeight a graph's initializers hold for ``linear_name`` (int8, int4 per
    channel or LPBQ int4, with or without block offsets — see ``quantkit.export.graphs``);
    int4 arrays read back as int4 dtype."""
    weight_name, offsets_name = f"{linear_name}.weight", f"{linear_name}.offsets"
    stored = values[weight_name]
    bits = 8 if stored.dtype == np.int8 else 4
    codes = torch.from_numpy(stored.astype(np.int8).T.copy())  # stored [in, out]
    if f"{weight_name}.block_scales" in values:
        block_scales = torch.from_numpy(values[f"{weight_name}.block_scales"].T.copy())  # stored [in / B, out]
        block_size = codes.shape[1] // block_scales.shape[1]
        offset_codes = offset_scales = None
        offset_bits = 8
        if offsets_name in values:
            stored_offsets = values[offsets_name]  # [in / B, out]: int8 or int4
            offset_bits = 8 if stored_offsets.dtype == np.int8 else 4
            offset_codes = torch.from_numpy(stored_offsets.astype(np.int8).T.copy())
            offset_scales = torch.from_numpy(values[f"{offsets_name}.scale"].copy())
        return QuantizedWeight(
            codes, torch.from_numpy(values[f"{weight_name}.channel_scale"].copy()), bits, block_size, block_scales, offset_codes, offset_scales, offset_bits
        )
    return QuantizedWeight(codes, torch.from_numpy(values[f"{weight_name}.scale"].copy()), bits)


def records_from_graph(folder: Path, entry: dict) -> list[QdqLinear]:
    """The deployed records of a bundle graph, read back from its initializers (the bit
    widths from the input's and each output's zero-point type)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / entry["file"]))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    input_name = entry["input"]
    bits = _BITS_OF_ZERO_POINT[values[f"{input_name}.zero_point"].dtype]
    means_scale = float(values.get(f"{input_name}.block_means.scale", values[f"{input_name}.scale"]))  # offset Linears; absent: bundles that used s_x
    records = []
    for name in entry["linears"]:
        bias = f"{name}.bias"
        weight = _weight_from_graph(values, name)
        records.append(
            QdqLinear(
                weight=weight,
                input_scale=float(values[f"{input_name}.scale"]),
                output_scale=float(values[f"{name}.output.scale"]),
                bits=bits,
                output_bits=_BITS_OF_ZERO_POINT[values[f"{name}.output.zero_point"].dtype],
                bias_codes=torch.from_numpy(values[bias].copy()) if bias in values else None,
                bias_scales=torch.from_numpy(values[f"{bias}.scale"].copy()) if bias in values else None,
                means_scale=means_scale if weight.has_offsets else None,
            )
        )
    return records


class QdqGraph:
    """torch twin of a bundle graph: its records (``quantkit.runtime.qdq``), the one
    definition of the deployed arithmetic, read back from the graph."""

    def __init__(self, folder: Path, entry: dict):
        self.linears = records_from_graph(folder, entry)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [record(x) for record in self.linears]

"""ONNX Runtime sessions on the CPU and on the QNN HTP backend (onnxruntime-qnn).

The HTP session runs with ``session.disable_cpu_ep_fallback=1``: creating it fails if any
node of the graph would run on the CPU, which is the proof that the whole graph runs on
the Hexagon NPU (in x86 emulation on a workstation, on the HTP on a Snapdragon device).
"""

from __future__ import annotations

from pathlib import Path

from quantkit.errors import QuantkitError

__all__ = ["CPU_KERNELS", "QnnUnavailableError", "cpu_session", "ort_cpu_session", "qnn_htp_session", "qnn_target_options", "write_qnn_context"]


# How the CPU provider runs a graph standing in for the NPU (quantkit.runtime.npu):
# "integer" — the A8 graphs on int8 GEMMs, the others with folded weights; "qdq" — as written.
CPU_KERNELS = ("integer", "qdq")


class QnnUnavailableError(QuantkitError):
    """onnxruntime-qnn is missing or exposes no QNN device."""


def ort_cpu_session(model: Path | bytes, threads: int = 1, fold_weights: bool = False):
    """An ONNX Runtime CPU session standing in for the NPU, of a graph file or a
    serialized model. ``threads=1`` runs the graph on
    the calling thread (the NPU worker): one ONNX Runtime session per graph, each with its own spinning
    thread pool, would starve the CPU worker's torch ops; 0 is ONNX Runtime's default.

    Basic optimizations only: ONNX Runtime 1.31's extended QDQ fusions turned a QDQ MatMul
    + INT32 bias Add into a Gemm whose inserted QuantizeLinear had mismatched types and
    failed to load (1.32 loads a tiny Qwen2 qkv graph at the extended level, its outputs
    within about one int8 step of the basic level: integer kernels, another arithmetic
    than the graph's). ``fold_weights`` also turns its QDQ handling off
    (``session.disable_quant_qdq``), so that constant folding replaces each weight's
    DequantizeLinear by its float result, once — the same values the node computes on
    every run — and MatMul prepacks that constant: about 3× faster per graph on this
    machine (block05.gate_up, 256 tokens, one thread: 36.6 → 12.1 ms). Activations keep
    every QuantizeLinear / DequantizeLinear. The prepacked GEMM sums in another order,
    so an output on a rounding boundary can land one step away; tests/runtime/test_engine.py
    (test_folded_weights_change_only_the_float_summation_order) shows the float products
    agree to float32 rounding."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if fold_weights:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    _share_cpu_arena(ort)
    options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options, providers=["CPUExecutionProvider"])


_SHARED_ARENA: list[bool] = []  # registered once per process


def _share_cpu_arena(ort) -> None:
    """One CPU memory arena for every ONNX Runtime CPU session of the process (its shared
    environment allocator). A bundle runs one InferenceSession per graph; with an arena
    each, every graph keeps the buffers of its own largest run: on a SmolLM2-360M-shaped
    bundle a 1024-token prefill held 785 MB more that way, for the same logits."""
    if not _SHARED_ARENA:
        ort.create_and_register_allocator(ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), None)
        _SHARED_ARENA.append(True)


def cpu_session(model_path: Path):
    """ONNX Runtime CPU session of a graph exactly as written (no weight folding), with
    ONNX Runtime's default threads: the reference executor of ``lint``."""
    return ort_cpu_session(model_path, threads=0, fold_weights=False)


def _qnn_devices():
    import onnxruntime as ort

    try:
        import onnxruntime_qnn
    except ImportError:
        raise QnnUnavailableError("onnxruntime-qnn is not installed; `pip install onnxruntime-qnn` (the README's install does)") from None
    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    if not devices:
        raise QnnUnavailableError("onnxruntime-qnn is installed but offers no QNN device")
    return devices


def qnn_htp_session(model_path: Path, provider_options: dict | None = None, session_entries: dict | None = None):
    """An HTP session with CPU fallback disabled (raises if any node is not HTP-capable)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_provider_for_devices(_qnn_devices(), {"backend_type": "htp", **(provider_options or {})})
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (session_entries or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model_path), sess_options=options)


def qnn_target_options(soc_model: int | None, htp_arch: int | None) -> dict:
    """The QNN provider options that compile for a Snapdragon target (none: the backend's default)."""
    return {name: str(value) for name, value in (("soc_model", soc_model), ("htp_arch", htp_arch)) if value is not None}


def write_qnn_context(model_path: Path, context_path: Path, soc_model: int | None, htp_arch: int | None) -> None:
    """Compile ``model_path`` for a Snapdragon target and write its EPContext model
    (``context_path``) plus the QNN context binary beside it — what the device loads."""
    qnn_htp_session(
        model_path,
        qnn_target_options(soc_model, htp_arch),
        {"ep.context_enable": "1", "ep.context_file_path": str(context_path), "ep.context_embed_mode": "0"},
    )

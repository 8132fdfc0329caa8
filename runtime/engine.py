"""Execute a bundle: chunked prefill with the NPU graphs in INT8 and the CPU work in FP
(arXiv 2407.05858 §3.2–3.4).

A prompt runs as chunks of the bundle's static size (last chunk zero-padded); chunk i
attends to the KV cache of chunks < i and itself (causal), so the logits equal a
single-pass run. Per NPU Linear input: clip at the calibrated threshold, run the INT8
graph on the clipped part, add the shadow result x_out @ W_fp[:, C]ᵀ on the CPU — hot
columns resident, cold ones read from the bundle only when an outlier lands there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantkit.runtime.bundle import BundleError, load_manifest
from quantkit.runtime.cpu_ops import apply_rope, causal_attention, rms_norm, rope_cos_sin

__all__ = ["BundleModel", "RuntimeCounters", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_ATTENTION = ("q_proj", "k_proj", "v_proj")
_MLP = ("gate_proj", "up_proj")


@dataclass
class RuntimeCounters:
    outlier_values: int = 0  # values beyond the clip sent to the shadow path
    cold_loads: int = 0  # cold shadow columns read from the bundle
    npu_runs: int = 0


def _cold_channels(site: dict) -> list[int]:
    hot = set(site["hot_channels_"])
    return [c for c in range(site["num_channels"]) if c not in hot]


class BundleModel:
    """A loaded bundle. ``npu="cpu"`` runs the graphs with ONNX Runtime's CPU provider,
    ``npu="qnn"`` on the QNN HTP backend (CPU fallback disabled). ``shadow=False`` drops
    the shadow path (outliers are clipped), for comparison.

    >>> model = BundleModel("bundle")                      # doctest: +SKIP
    >>> logits = model.prefill(token_ids)                  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, npu: str = "cpu", shadow: bool = True):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.arch = self.manifest["architecture"]
        if self.arch["model_type"] not in SUPPORTED_MODEL_TYPES:
            raise BundleError(f"the runtime executes {', '.join(SUPPORTED_MODEL_TYPES)} bundles; this one is {self.arch['model_type']!r}")
        if npu not in ("cpu", "qnn"):
            raise BundleError(f"npu: got {npu!r}, expected 'cpu' (ONNX Runtime CPU provider) or 'qnn' (QNN HTP)")
        from safetensors import safe_open
        from safetensors.torch import load_file

        self.chunk_size = self.manifest["chunk_size"]
        plan = json.loads((self.folder / self.manifest["shadow"]["plan"]).read_text())
        self.activation_bits = self.manifest["quantization"]["activation_bits"]
        self.sites = {name: site for name, site in plan["sites"].items()}
        self.site_of = {linear: site for site in self.sites.values() for linear in site["linear_names"]}
        # Cold channels: every channel that is not hot (the column order of "<linear>.cold").
        self.cold_channels = {name: _cold_channels(site) for name, site in self.sites.items()}
        self.cpu = load_file(str(self.folder / "cpu.safetensors"))
        self.hot = load_file(str(self.folder / self.manifest["shadow"]["resident"]))
        self._cold = safe_open(str(self.folder / self.manifest["shadow"]["cold"]), framework="pt")
        self.placement = self.manifest["placement"]
        self.sessions = {graph["linears"][0]: (graph, self._session(graph["file"], npu)) for graph in self.manifest["graphs"]}
        self.shadow = shadow
        self.counters = RuntimeCounters()

    def _session(self, relative: str, npu: str):
        import onnxruntime as ort

        path = str(self.folder / relative)
        if npu == "qnn":
            from quantkit.export.qnn import qnn_htp_session

            return qnn_htp_session(Path(path))
        options = ort.SessionOptions()
        # ONNX Runtime 1.31's extended QDQ fusions break QDQ MatMul + INT32 bias graphs.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    # -- one shadow site: the Linears reading one input ---------------------------------
    def _site_outputs(self, block: int, first_linear: str, x: torch.Tensor) -> list[torch.Tensor]:
        site = self.site_of[first_linear]
        names = site["linear_names"]
        if self.placement[block] != "npu":
            return [self._fp_linear(name, x) for name in names]
        threshold = site["threshold_"]
        clipped = x.clamp(-threshold, threshold)
        graph, session = self.sessions[first_linear]
        padded = torch.zeros(1, self.chunk_size, x.shape[-1])
        padded[0, : x.shape[0]] = clipped
        outputs = session.run(None, {graph["input"]: padded.numpy()})
        self.counters.npu_runs += 1
        ys = [torch.from_numpy(np.asarray(y))[0, : x.shape[0]] for y in outputs]
        shadowed = self.shadow and not site["pruned"] and threshold < site["absmax_"]
        if shadowed:
            excess = x - clipped
            self.counters.outlier_values += int((excess != 0).sum())
            hot, cold = site["hot_channels_"], self.cold_channels[first_linear]
            cold_needed = bool(cold) and bool((excess[:, cold] != 0).any())
            for index, name in enumerate(names):
                shadow = excess[:, hot] @ self.hot[f"{name}.hot"].T
                if cold_needed:  # Eq. 1's shadow part over the cold channels, read on demand
                    shadow = shadow + excess[:, cold] @ self._cold.get_tensor(f"{name}.cold").T
                    self.counters.cold_loads += 1
                ys[index] = ys[index] + shadow
        return ys

    def _fp_linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        bias = self.cpu.get(f"{name}.bias")
        return torch.nn.functional.linear(x, self.cpu[f"{name}.weight"], bias)

    # -- the model -------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] of a 1-D prompt, computed chunk by chunk."""
        input_ids = torch.as_tensor(input_ids).flatten()
        if input_ids.numel() == 0:
            raise BundleError("the prompt is empty")
        if input_ids.numel() > self.manifest["context_length"]:
            raise BundleError(f"the prompt has {input_ids.numel()} tokens; this bundle's context is {self.manifest['context_length']} — shorten the prompt")
        arch = self.arch
        layers = arch["num_hidden_layers"]
        cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        logits = []
        for start in range(0, input_ids.numel(), self.chunk_size):
            chunk = input_ids[start : start + self.chunk_size]
            h = self.cpu["model.embed_tokens.weight"][chunk]
            positions = torch.arange(start, start + chunk.numel())
            cos, sin = rope_cos_sin(positions, arch["head_dim"], arch["rope_parameters"]["rope_theta"])
            for block in range(layers):
                h, cache[block] = self._block(block, h, cache[block], start, cos, sin)
            h = rms_norm(h, self.cpu["model.norm.weight"], arch["rms_norm_eps"])
            head = self.cpu.get("lm_head.weight", self.cpu["model.embed_tokens.weight"])
            logits.append(h @ head.T)
        return torch.cat(logits)

    def _block(self, block: int, h: torch.Tensor, cache, start: int, cos: torch.Tensor, sin: torch.Tensor):
        arch = self.arch
        prefix = f"model.layers.{block}"
        heads, kv_heads, head_dim = arch["num_attention_heads"], arch["num_key_value_heads"], arch["head_dim"]
        x = rms_norm(h, self.cpu[f"{prefix}.input_layernorm.weight"], arch["rms_norm_eps"])
        q, k, v = self._site_outputs(block, f"{prefix}.self_attn.q_proj", x)
        length = x.shape[0]
        q = apply_rope(q.view(length, heads, head_dim).transpose(0, 1), cos, sin)
        k = apply_rope(k.view(length, kv_heads, head_dim).transpose(0, 1), cos, sin)
        v = v.view(length, kv_heads, head_dim).transpose(0, 1)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
        attention = causal_attention(q, k, v, start).transpose(0, 1).reshape(length, heads * head_dim)
        (o,) = self._site_outputs(block, f"{prefix}.self_attn.o_proj", attention)
        h = h + o
        x = rms_norm(h, self.cpu[f"{prefix}.post_attention_layernorm.weight"], arch["rms_norm_eps"])
        gate, up = self._site_outputs(block, f"{prefix}.mlp.gate_proj", x)
        (down,) = self._site_outputs(block, f"{prefix}.mlp.down_proj", torch.nn.functional.silu(gate) * up)
        return h + down, (k, v)

"""``export_bundle``: calibration folder + model → the deployment bundle (DESIGN.md).

Written into a temporary folder beside ``out`` (``atomic_directory``) and renamed into
place only when every file, the manifest and its hashes are complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from quantkit.cache import atomic_directory
from quantkit.calibration.config import CalibrationConfig
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.errors import QuantkitError
from quantkit.export.graphs import build_site_graph
from quantkit.models.loading import load_model
from quantkit.outlier_shadow.plan import PLAN_FILE, ShadowPlan
from quantkit.outlier_shadow.simulated_linear import calibrate_npu_output_ranges
from quantkit.quant_primitives import quantize_symmetric, symmetric_scale
from quantkit.report import write_report
from quantkit.hashing import file_sha256
from quantkit.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST_FILE
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan

__all__ = ["export_bundle", "CALIBRATION_INPUTS_FILE"]

CALIBRATION_INPUTS_FILE = "calibration_inputs.safetensors"
_OUTPUT_RANGE_SEQUENCES = 4


def _architecture(config) -> dict:
    text = getattr(config, "text_config", config)
    return {
        "model_type": text.model_type,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        "vocab_size": text.vocab_size,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_parameters": getattr(text, "rope_parameters", None),
        "max_position_embeddings": text.max_position_embeddings,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


def _converter_command(graph_file: str, input_name: str, shape: list[int]) -> str:
    return (
        f"qnn-onnx-converter --input_network {graph_file} --quantization_overrides encodings.json "
        f'--input_dim "{input_name}" {",".join(map(str, shape))} --output_path qnn/{Path(graph_file).stem}.cpp'
    )


@torch.no_grad()
def _capture_site_inputs(layout, plan: ShadowPlan, sites, sequence: torch.Tensor, chunk_size: int) -> dict[str, torch.Tensor]:
    """The first chunk of each NPU site's clipped FP input over one calibration sequence,
    as integer codes (lossless for the graph: its first node quantizes to exactly these)."""
    captured = {}

    def hook_for(site):
        def hook(module, args, output):
            x = args[0][:1, :chunk_size].float()
            if x.shape[1] < chunk_size:
                x = torch.nn.functional.pad(x, (0, 0, 0, chunk_size - x.shape[1]))
            clipped = x.clamp(-site.threshold_, site.threshold_)
            bits = plan.activation_bits
            codes = quantize_symmetric(clipped, symmetric_scale(site.threshold_, bits), bits)
            captured[site.linear_names[0]] = codes.to(torch.int8 if bits == 8 else torch.int16).cpu()

        return hook

    handles = [layout.linear(site.linear_names[0]).register_forward_hook(hook_for(site)) for site in sites]
    try:
        layout.model(input_ids=sequence.to(next(layout.model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def export_bundle(
    calib: str | Path,
    out: str | Path,
    *,
    chunk_size: int = 256,
    activation_bits: int = 16,
    qnn_context: bool = False,
    soc_model: int | None = None,
    htp_arch: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    naive_w8a8: bool = False,
) -> Path:
    """Write the deployment bundle of the calibration in ``calib`` to ``out``.

    ``naive_w8a8=True`` writes the baseline a plain PTQ flow would ship, for regression
    suites to compare against: every block on the NPU, INT8 activations per tensor with
    min/max ranges (inputs and outputs), no shadow path.

    >>> export_bundle("calib", "bundle", qnn_context=True, soc_model=60)   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    calib, out = Path(calib), Path(out)
    for required in ("config.json", PLAN_FILE, PLACEMENT_FILE):
        if not (calib / required).is_file():
            raise QuantkitError(f"{calib}: no {required}; pass the folder written by `quantkit calibrate`")
    if out.exists() and not overwrite:
        raise QuantkitError(f"{out} already exists; choose another --out or pass --overwrite")
    if chunk_size < 1:
        raise QuantkitError(f"--chunk-size: got {chunk_size}, expected a positive number of tokens, e.g. 256")
    if activation_bits not in (8, 16):
        raise QuantkitError(f"--activation-bits: got {activation_bits}, expected 8 (INT8, the paper's scheme) or 16 (W8A16)")
    if qnn_context and soc_model is None and htp_arch is None:
        raise QuantkitError("--qnn-context needs a target: --soc-model N (e.g. 60 for Snapdragon 8 Gen 3) or --htp-arch N (e.g. 75)")
    config = CalibrationConfig.load(calib / "config.json")
    plan = ShadowPlan.load(calib / PLAN_FILE)
    plan.activation_bits = activation_bits
    placement = PlacementPlan.load(calib / PLACEMENT_FILE)
    if naive_w8a8:
        if activation_bits != 8:
            raise QuantkitError("--naive-w8a8 is the INT8 baseline: pass --activation-bits 8")
        for site in plan.sites.values():
            site.threshold_, site.pruned = site.absmax_, True  # min/max range, no shadow path
        plan.config = dataclasses.replace(plan.config, weight_scale_rule="max")  # min/max weights too
        placement.placement = ["npu"] * len(placement.placement)
    loaded = load_model(config.model, device)
    layout = loaded.layout
    sequences = token_sequences(loaded.tokenizer, load_documents(config.data, "calibration"), _OUTPUT_RANGE_SEQUENCES, config.seq_len, source="calibration split")
    calibrate_npu_output_ranges(layout, plan, sequences, rule="max" if naive_w8a8 else "mse")
    npu_blocks = placement.npu_block_indices
    npu_sites = [site for site in plan.sites.values() if site.block_index in npu_blocks]
    architecture = _architecture(loaded.model.config)

    with atomic_directory(out) as staging:
        (staging / "npu").mkdir()
        graphs, activation_encodings, param_encodings = [], [], []
        for site in tqdm(npu_sites, desc="NPU graphs", unit="graph", disable=not progress):
            graph = build_site_graph(layout, plan, site, chunk_size)
            graph_file = f"npu/{graph.name}.onnx"
            (staging / graph_file).write_bytes(graph.model.SerializeToString())
            activation_encodings += graph.activation_encodings
            param_encodings += graph.param_encodings
            entry = {
                "name": graph.name,
                "file": graph_file,
                "block": graph.block_index,
                "linears": site.linear_names,
                "input": graph.input_name,
                "input_shape": [1, chunk_size, site.num_channels],
                "outputs": graph.output_names,
                "converter_command": _converter_command(graph_file, graph.input_name, [1, chunk_size, site.num_channels]),
            }
            if qnn_context:
                context_file = f"npu/{graph.name}_ctx.onnx"
                from quantkit.export.qnn import write_qnn_context

                write_qnn_context(staging / graph_file, staging / context_file, soc_model, htp_arch)
                entry["qnn_context"] = context_file
            graphs.append(entry)
        (staging / "encodings.json").write_text(
            json.dumps(
                {
                    "version": "1.0.0",
                    "producer": {"package": "quantkit"},
                    "activation_encodings": activation_encodings,
                    "param_encodings": param_encodings,
                    "excluded_layers": [],
                    "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 8, "dtype": "int", "per_channel_quantization": True, "is_symmetric": True},
                },
                indent=1,
            )
        )
        save_file(_capture_site_inputs(layout, plan, npu_sites, sequences[:1], chunk_size), str(staging / CALIBRATION_INPUTS_FILE))
        shadow = plan.shadow_weights(layout, blocks=npu_blocks)
        save_file({k: v for k, v in shadow.items() if k.endswith(".hot")}, str(staging / "shadow.safetensors"))
        save_file({k: v for k, v in shadow.items() if k.endswith(".cold")}, str(staging / "shadow_cold.safetensors"))
        npu_linears = {f"{name}.{p}" for site in npu_sites for name in site.linear_names for p in ("weight", "bias")}
        cpu_state = {k: v.detach().float().cpu().contiguous() for k, v in loaded.model.state_dict().items() if k not in npu_linears}
        if architecture["tie_word_embeddings"]:
            cpu_state.pop("lm_head.weight", None)  # the same tensor as the embeddings
        save_file(cpu_state, str(staging / "cpu.safetensors"))
        loaded.tokenizer.save_pretrained(staging / "tokenizer")
        write_report(staging / "report", calib=calib)  # hashed in the manifest like every file
        plan.save(staging / PLAN_FILE)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "source_model": {"id": config.model, "sha256": loaded.source_sha256},
            "architecture": architecture,
            "chunk_size": chunk_size,
            "context_length": architecture["max_position_embeddings"],
            "quantization": {
                "weights": f"int8 symmetric per output channel ({plan.config.weight_scale_rule} scales)",
                "activation_bits": activation_bits,
                "activations": f"int{activation_bits} symmetric per tensor, clipped inputs (shadow outliers in FP on the CPU), int{activation_bits} outputs",
                "bias": "int32, scale = input scale × weight scale",
                "norms": "cpu (fp32)",
                "scheme": "naive-w8a8 (min/max ranges, no shadow path, every block on the NPU)" if naive_w8a8 else "quantkit (clipped inputs + shadow outliers, sensitivity placement)",
            },
            "shadow": {"plan": PLAN_FILE, "resident": "shadow.safetensors", "cold": "shadow_cold.safetensors", "hot_coverage": plan.hot_coverage_},
            "placement": placement.placement,
            "graphs": graphs,
            "qnn_target": {"soc_model": soc_model, "htp_arch": htp_arch} if qnn_context else None,
            "files": {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out

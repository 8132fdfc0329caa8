"""``export_bundle``: calibration folder + model → the deployment bundle (docs/bundle-format.md).

Written into a temporary folder beside ``out`` (``atomic_directory``) and renamed into
place only when every file, the manifest and its hashes are complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from quantkit.cache import atomic_directory
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.errors import QuantkitError
from quantkit.export.graphs import build_site_graph
from quantkit.hashing import file_sha256
from quantkit.models.loading import LoadedModel, load_model
from quantkit.outlier_shadow.plan import PLAN_FILE, ShadowPlan
from quantkit.precision.output_ranges import initial_precision, output_clips, record_npu_outputs
from quantkit.precision.plan import PRECISION_FILE, PrecisionPlan
from quantkit.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, DEFAULT_CHUNK_SIZE, MANIFEST_FILE
from quantkit.runtime.qdq import activation_scale, quantize_activation
from quantkit.runtime.shadow import split_outliers
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan
from quantkit.tensor_files import save_tensors_streaming
from quantkit.weights.quantize import WEIGHTS_FILE, int8_weight_bytes, load_weights, quantized_weights

__all__ = ["export_bundle", "CALIBRATION_INPUTS_FILE"]

CALIBRATION_INPUTS_FILE = "calibration_inputs.safetensors"
_OUTPUT_RANGE_SEQUENCES = 4

log = logging.getLogger(__name__)


def _weights_description(bits: list[int], block_sizes: list[int], rule: str, rounding: str, block_offsets: str = "none", offset_kinds: str = "") -> str:
    parts = []
    if 8 in bits:
        parts.append(f"int8 symmetric per output channel ({rule} scales, nearest)")
    if 4 in bits:
        layout = f"LPBQ blocks of {', '.join(map(str, block_sizes))} inputs" if block_sizes else "per output channel"
        kind = (
            f"asymmetric ({block_offsets} block offsets{' on ' + offset_kinds + '; the rest symmetric' if offset_kinds else ''})"
            if block_offsets != "none"
            else "symmetric"
        )
        parts.append(f"int4 {kind}, {layout} ({rule} scales, {rounding} rounding)")
    return "; ".join(parts)


def _offsets_summary(graphs: list[dict]) -> tuple[str, str]:
    """(the block-offset formats of the 4-bit graphs, or "none"; where they are when only some
    LPBQ graphs have them — whole graph kinds by name, else "N of M graphs" — else "")."""
    lpbq = [g for g in graphs if g["weight_bits"] == 4 and g["weight_block_size"]]
    formats = "/".join(sorted({g["weight_block_offsets"] for g in lpbq} - {"none"})) or "none"
    with_offsets = [g for g in lpbq if g["weight_block_offsets"] != "none"]
    if formats == "none" or len(with_offsets) == len(lpbq):
        return formats, ""
    kind = lambda g: g["name"].split(".", 1)[1]  # noqa: E731
    kinds = {kind(g) for g in with_offsets}
    if all(g["weight_block_offsets"] != "none" for g in lpbq if kind(g) in kinds):
        return formats, ", ".join(sorted(kinds))
    return formats, f"{len(with_offsets)} of {len(lpbq)} LPBQ graphs"


def _calibration_settings(calib: Path) -> dict:
    """The calibration settings export reads, from the folder's ``config.json`` as written
    by ``CalibrationConfig.save`` (read as data: export does not import calibration):
    version 2 in sections (``statistics.seq_len``), version 1 one flat mapping."""
    values = json.loads((calib / "config.json").read_text())

    def setting(section: str, key: str, default=None):
        nested = values.get(section)
        if isinstance(nested, dict) and key in nested:
            return nested[key]
        if key in values or default is not None:
            return values.get(key, default)
        raise KeyError(f"{section}.{key}")

    try:
        return {
            "model": values["model"],
            "data": values["data"],
            "seq_len": setting("statistics", "seq_len"),
            "rotation": values.get("rotation", "none"),  # absent: written before rotations existed
            "weight_rounding": setting("weights", "weight_rounding", "gptq"),
        }
    except KeyError as error:
        raise QuantkitError(f"{calib / 'config.json'}: no {error}; pass the folder written by `quantkit calibrate`") from None


def _converter_command(graph_file: str, input_name: str, shape: list[int]) -> str:
    return (
        f"qnn-onnx-converter --input_network {graph_file} --quantization_overrides encodings.json "
        f'--input_dim "{input_name}" {",".join(map(str, shape))} --output_path qnn/{Path(graph_file).stem}.cpp'
    )


@torch.no_grad()
def _capture_site_inputs(layout, plan: ShadowPlan, precision: PrecisionPlan, sites, sequence: torch.Tensor, chunk_size: int) -> dict[str, torch.Tensor]:
    """The first chunk of each NPU site's clipped FP input over one calibration sequence,
    as integer codes (lossless for the graph: its first node quantizes to exactly these);
    split as the runtime splits it (Eq. 1), the sink rows zero."""
    captured = {}

    def hook_for(site):
        def hook(module, args, output):
            x = args[0][:1, :chunk_size].float()
            if x.shape[1] < chunk_size:
                x = torch.nn.functional.pad(x, (0, 0, 0, chunk_size - x.shape[1]))
            sink_rows = torch.arange(chunk_size) < (plan.config.sink_tokens if site.shadowed else 0)
            clipped, _ = split_outliers(x, site.threshold_, sink_rows)
            bits = precision.graphs[site.linear_names[0]].activation_bits
            codes = quantize_activation(clipped, activation_scale(site.threshold_, bits), bits)
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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    activation_bits: int | None = None,
    output_bits: int | None = None,
    qnn_context: bool = False,
    soc_model: int | None = None,
    htp_arch: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    naive_w8a8: bool = False,
    loaded: LoadedModel | None = None,
) -> Path:
    """Write the deployment bundle of the calibration in ``calib`` to ``out``.

    The graphs serialise the calibration's decisions — shadow plan, per-graph activation
    bits and output ranges (``precision.json``), placement — nothing is re-decided here.
    ``activation_bits`` 8 or 16 puts every graph's input at that width instead, its outputs
    at ``output_bits`` (8 or 16, at least the input's; None: as wide as the input), with
    the output ranges calibration recorded for that width; None keeps the calibrated
    per-graph bits.

    ``naive_w8a8=True`` writes the baseline a plain PTQ flow would ship, for regression
    suites to compare against: every block on the NPU, INT8 activations per tensor with
    min/max ranges (inputs and outputs), no shadow path.

    ``loaded``: the calibration's model, already in memory (calibration's own check of its
    bundle), instead of a second copy loaded from ``config.json``'s model; it must be that
    model, loaded the same way, with its float Linears in place.

    >>> export_bundle("calib", "bundle", qnn_context=True, soc_model=60)   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    calib, out = Path(calib), Path(out)
    for required in ("config.json", PLAN_FILE, PRECISION_FILE, PLACEMENT_FILE):
        if not (calib / required).is_file():
            raise QuantkitError(
                f"{calib}: no {required}; pass the folder written by `quantkit calibrate` (a calibration made before per-graph precision existed must be run again)"
            )
    if out.exists() and not overwrite:
        raise QuantkitError(f"{out} already exists; choose another --out or pass --overwrite")
    if chunk_size < 1:
        raise QuantkitError(f"--chunk-size: got {chunk_size}, expected a positive number of tokens, e.g. 256")
    if activation_bits not in (None, 8, 16):
        raise QuantkitError(
            f"--activation-bits: got {activation_bits}, expected 8 (every graph INT8, the paper's scheme), 16 (every graph A16) or nothing (the calibrated per-graph bits)"
        )
    if output_bits is not None and (activation_bits is None or output_bits not in (8, 16) or output_bits < activation_bits):
        raise QuantkitError(
            f"--output-bits: got {output_bits}, expected 8 or 16, at least --activation-bits (given: {activation_bits}), and only with --activation-bits"
        )
    if qnn_context and soc_model is None and htp_arch is None:
        raise QuantkitError("--qnn-context needs a target: --soc-model N (e.g. 60 for Snapdragon 8 Gen 3) or --htp-arch N (e.g. 75)")
    config = _calibration_settings(calib)
    try:
        plan = ShadowPlan.load(calib / PLAN_FILE)
        precision = PrecisionPlan.load(calib / PRECISION_FILE)
    except (ValueError, KeyError, TypeError) as error:
        raise QuantkitError(f"{calib}: {error}") from error
    placement = PlacementPlan.load(calib / PLACEMENT_FILE)
    if loaded is None:
        loaded = load_model(config["model"], device, rotation=config["rotation"])  # the basis calibration measured in
    layout = loaded.layout
    sequences = token_sequences(
        loaded.tokenizer, load_documents(config["data"], "calibration"), _OUTPUT_RANGE_SEQUENCES, config["seq_len"], source="calibration split"
    )
    if naive_w8a8:
        if activation_bits != 8:
            raise QuantkitError("--naive-w8a8 is the INT8 baseline: pass --activation-bits 8")
        for site in plan.sites.values():
            site.threshold_, site.pruned = site.absmax_, True  # min/max range, no shadow path
            site.output_channels_ = {}
        plan.config = dataclasses.replace(plan.config, weight_scale_rule="max")  # min/max weights too
        placement.placement = ["npu"] * len(placement.placement)
        # the baseline's own output ranges: min/max over its own (unclipped INT8) inputs
        recorded = record_npu_outputs(layout, plan, sequences, input_bits=8)
        precision = initial_precision(layout, plan, {name: output_clips(absmax, histogram, "max") for name, (absmax, histogram, _) in recorded.items()}, "8")
    elif activation_bits is not None:
        try:
            precision = precision.with_uniform_bits(activation_bits, output_bits)
        except ValueError as error:
            raise QuantkitError(f"--activation-bits {activation_bits}: {error}") from None
    npu_blocks = placement.npu_block_indices
    npu_sites = [site for site in plan.sites.values() if site.block_index in npu_blocks]
    pruned_a8 = [site for site in npu_sites if site.pruned and precision.graphs[site.linear_names[0]].activation_bits == 8]
    if pruned_a8 and not naive_w8a8:
        log.warning(
            "%d NPU graphs run at A8 without the shadow path (the calibration pruned it for 16-bit graphs): an INT8 range "
            "clips their outliers and costs accuracy; for A8 graphs, calibrate with --activation-bits 8 or auto "
            "(every site then keeps its shadow path)",
            len(pruned_a8),
        )
    architecture = loaded.architecture

    with atomic_directory(out) as staging:
        (staging / "npu").mkdir()
        graphs, activation_encodings, param_encodings = [], [], []
        npu_linears = [n for site in npu_sites for n in site.linear_names]
        if (calib / WEIGHTS_FILE).is_file() and not naive_w8a8:
            weights = load_weights(calib / WEIGHTS_FILE)  # calibration's weights (e.g. GPTQ-rounded INT4), serialised as they are
        else:  # the naive baseline (min/max) or a calibration made before weights were stored: round to nearest
            weights = quantized_weights(layout, npu_linears, plan.config.weight_scale_rule)
        for site in tqdm(npu_sites, desc="NPU graphs", unit="graph", disable=not progress):
            graph_precision = precision.graphs[site.linear_names[0]]
            graph = build_site_graph(layout, plan, graph_precision, site, chunk_size, weights)
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
                "activation_bits": graph_precision.activation_bits,
                "output_bits": graph_precision.out_bits,
                "weight_bits": graph_precision.weight_bits,
                "weight_block_size": graph_precision.weight_block_size,
                "weight_block_offsets": next((weights[n].offset_format for n in site.linear_names if weights[n].has_offsets), "none"),
                "weight_bytes": sum(weights[n].nbytes for n in site.linear_names),
                "macs_per_token": graph_precision.macs_per_token,
                "converter_command": _converter_command(graph_file, graph.input_name, [1, chunk_size, site.num_channels]),
            }
            if qnn_context:
                context_file = f"npu/{graph.name}_ctx.onnx"
                from quantkit.runtime.sessions import write_qnn_context

                write_qnn_context(staging / graph_file, staging / context_file, soc_model, htp_arch)
                entry["qnn_context"] = context_file
            graphs.append(entry)
        all_bits = sorted({g["activation_bits"] for g in graphs}) or [16]
        bundle_bits = all_bits[0] if len(all_bits) == 1 else "mixed"
        weight_bits = sorted({g["weight_bits"] for g in graphs}) or [8]
        block_sizes = sorted({g["weight_block_size"] for g in graphs if g["weight_block_size"]})
        npu_weight_bytes = sum(g["weight_bytes"] for g in graphs)
        w8_weight_bytes = int8_weight_bytes(layout, npu_linears)
        (staging / "encodings.json").write_text(
            json.dumps(
                {
                    "version": "1.0.0",
                    "producer": {"package": "quantkit"},
                    "activation_encodings": activation_encodings,
                    "param_encodings": param_encodings,
                    "excluded_layers": [],
                    # one bit-width per bundle only when every graph has it (per-tensor entries carry their own "bw")
                    "quantizer_args": {
                        "activation_bitwidth": bundle_bits if isinstance(bundle_bits, int) else max(all_bits),
                        "param_bitwidth": max(weight_bits),
                        "dtype": "int",
                        "per_channel_quantization": True,
                        "is_symmetric": True,
                    },
                },
                indent=1,
            )
        )
        save_file(_capture_site_inputs(layout, plan, precision, npu_sites, sequences[:1], chunk_size), str(staging / CALIBRATION_INPUTS_FILE))
        save_file(plan.resident_shadow_weights(layout, blocks=npu_blocks), str(staging / "shadow.safetensors"))  # hot columns, output-side rows
        save_tensors_streaming(plan.cold_shadow_columns(layout, blocks=npu_blocks), staging / "shadow_cold.safetensors")  # one Linear's at a time
        npu_parameters = {f"{name}.{p}" for name in npu_linears for p in ("weight", "bias")}
        cpu_state = {k: v.detach().float().cpu().contiguous() for k, v in loaded.model.state_dict().items() if k not in npu_parameters}
        if architecture.tied_embeddings:  # the LM head is the embeddings tensor: stored once
            cpu_state.pop("lm_head.weight", None)
        save_tensors_streaming(cpu_state, staging / "cpu.safetensors")  # the model's own tensors, no second copy
        loaded.tokenizer.save_pretrained(staging / "tokenizer")
        if (calib / "report").is_dir():  # the calibration's report, as calibration wrote it; hashed in the manifest like every file
            shutil.copytree(calib / "report", staging / "report")
        plan.save(staging / PLAN_FILE)
        precision.save(staging / PRECISION_FILE)
        npu_macs = sum(g["macs_per_token"] for g in graphs)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "source_model": {"id": config["model"], "sha256": loaded.source_sha256},
            "architecture": architecture.to_dict(),  # what each block computes (runtime/architecture.py)
            "rotation": loaded.rotation.to_dict() if loaded.rotation else None,  # fused into the weights: the residual stream's basis
            "chunk_size": chunk_size,
            "context_length": architecture.max_positions,
            "quantization": {
                "weights": _weights_description(weight_bits, block_sizes, plan.config.weight_scale_rule, config["weight_rounding"], *_offsets_summary(graphs)),
                "weight_bits": weight_bits[0] if len(weight_bits) == 1 else "mixed",  # each graph entry has its own
                "npu_weight_bytes": npu_weight_bytes,
                "npu_weight_bytes_vs_w8": npu_weight_bytes / w8_weight_bytes if w8_weight_bytes else 1.0,
                "activation_bits": bundle_bits,  # 8, 16, or "mixed": each graph entry has its own
                "a8_mac_share": sum(g["macs_per_token"] for g in graphs if g["activation_bits"] == 8) / npu_macs if npu_macs else 0.0,
                "activations": "symmetric per tensor, each graph's input at its activation_bits (int8 or int16: the MACs' width) and its outputs at its output_bits (int8 or int16), clipped inputs (shadow outliers in FP on the CPU)",
                "bias": "int32, scale = input scale × weight scale",
                "norms": "cpu (fp32)",
                "scheme": "naive-w8a8 (min/max ranges, no shadow path, every block on the NPU)"
                if naive_w8a8
                else "quantkit (clipped inputs + shadow outliers, sensitivity placement)",
            },
            # sink_tokens: the first positions of a sequence run whole in FP on the CPU (runtime/shadow.py)
            "shadow": {
                "plan": PLAN_FILE,
                "resident": "shadow.safetensors",
                "cold": "shadow_cold.safetensors",
                "hot_coverage": plan.hot_coverage_,
                "sink_tokens": plan.config.sink_tokens,
            },
            "placement": placement.placement,
            "graphs": graphs,
            "qnn_target": {"soc_model": soc_model, "htp_arch": htp_arch} if qnn_context else None,
            "files": {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out

"""``calibrate``: the main verb. Statistics, AIMET W8A8 baseline, report — into one folder.

The folder is built under ``.<out>.partial`` beside ``out`` (created once the model and
text are loaded, removed again by a failure before the first checkpoint) and renamed into
place only when complete; the statistics pass checkpoints there after every batch, so
running the same command again after a kill resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit.calibration.aimet_baseline import (
    ENCODINGS_FILE,
    QUANTIZER_STATE_FILE,
    LogitsModel,
    build_w8a8_quantsim,
    compute_w8a8_encodings,
    quantsim_encodings_1_0_0,
    save_quantizer_state,
    write_encodings,
)
from quantkit.calibration.bundle_perplexity import bundle_perplexity, export_check_bundle
from quantkit.calibration.collect import collect_activation_statistics
from quantkit.calibration.config import CalibrationConfig
from quantkit.calibration.report import OutlierLayer, format_summary, plot_outlier_heatmap, rank_outlier_layers
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.errors import QuantkitError
from quantkit.eval.perplexity import perplexity, sequence_nll
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import build_shadow_plan, simulated_quantization
from quantkit.outlier_shadow.plan import PLAN_FILE
from quantkit.precision.output_ranges import calibrated_precision
from quantkit.precision.plan import PRECISION_FILE, PrecisionPlan
from quantkit.precision.search import graph_sensitivity, search_activation_bits, search_weight_bits, sensitive_block_graphs
from quantkit.precision.weight_bits import assign_four_bit_weights
from quantkit.report import write_report
from quantkit.sensitivity import BlockSensitivity, block_sensitivity, plan_placement
from quantkit.sensitivity.measure import FpReference, fp_reference
from quantkit.sensitivity.placement import PLACEMENT_FILE
from quantkit.sensitivity.realizations import nll_realizations, relative_ppl_interval
from quantkit.stages import StageMeter, release_freed_memory
from quantkit.weights import WEIGHTS_FILE, WeightCodes, collect_input_hessians, int8_weight_bytes, quantized_weights, save_weights

__all__ = ["calibrate", "CalibrationResult", "SUMMARY_JSON", "SUMMARY_TEXT", "HEATMAP_FILE"]

log = logging.getLogger(__name__)
SUMMARY_JSON = "summary.json"
SUMMARY_TEXT = "summary.txt"
HEATMAP_FILE = "report/outlier_heatmap.png"
SENSITIVITY_FILE = "sensitivity.json"
_TOP_LAYERS = 10
_OUTPUT_RANGE_SEQUENCES = 4  # calibration sequences the NPU output ranges are recorded on
_REALIZATIONS = 3  # rounding realizations of the chosen arithmetic with A8 graphs (see sensitivity/realizations.py)


@dataclass
class CalibrationResult:
    out: Path
    perplexities: dict[str, float]
    top_layers: list[OutlierLayer]
    summary: str


def _fingerprint(config: CalibrationConfig, source_sha256: str, calibration_ids: torch.Tensor) -> str:
    """Identity of the statistics a run computes: a checkpoint only resumes the same run."""
    settings = config.settings()
    relevant = {k: settings[k] for k in ("model", "data", "num_sequences", "seq_len", "batch_size", "outlier_quantile", "rotation", "sink_tokens")}
    relevant["version"] = 1  # as when the config was flat (version 1): partial runs written then still resume
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    digest.update(source_sha256.encode())
    digest.update(calibration_ids.numpy().tobytes())
    return digest.hexdigest()


def _int8_weights(layout, plan, calibration_ids: torch.Tensor, config: CalibrationConfig, progress: bool) -> tuple[WeightCodes, dict | None]:
    """Every NPU Linear's INT8 weights, and the GPTQ Hessians when they were needed for them.

    Rounded to nearest, except in a rotated basis: the norm scales are folded into the
    weights there, and rounded to nearest INT8 then loses +0.7% validation perplexity on
    SmolLM2 (−0.1% unrotated), so GPTQ rounds INT8 too (``--weight-rounding gptq``)."""
    rule = plan.config.weight_scale_rule
    if config.rotation == "none" or config.weights.weight_rounding != "gptq":
        return quantized_weights(layout, layout.linear_names(), rule), None
    hessians = collect_input_hessians(layout, plan, calibration_ids, config.statistics.batch_size, progress)
    return quantized_weights(layout, layout.linear_names(), rule, 8, None, "gptq", hessians, progress), hessians


@dataclass
class _HeldOut:
    """Validation windows and FP's mean NLL on each: ``search`` decides, ``confirmation``
    (later windows of the same split) checks the decision on text the search never saw."""

    search: torch.Tensor
    search_fp_nll: torch.Tensor
    confirmation: torch.Tensor
    confirmation_fp_nll: torch.Tensor

    @property
    def fp_ppl(self) -> float:
        return math.exp(float(self.search_fp_nll.mean()))


def _point(nll: torch.Tensor, fp_nll: torch.Tensor) -> dict[str, float]:
    """A measured point: its perplexity over every realization and window, and the
    interval of relative_ppl_interval as perplexities."""
    estimate, low, high = relative_ppl_interval(nll, fp_nll)
    fp = math.exp(float(fp_nll.double().mean()))
    return {"ppl": fp * (1 + estimate), "ppl_lower": fp * (1 + low), "ppl_upper": fp * (1 + high)}


def _plan_quantization(
    loaded, statistics, calibration_ids: torch.Tensor, held_out: _HeldOut, config: CalibrationConfig, staging: Path, meter: StageMeter, progress: bool
):
    """Shadow plan (§3.3), NPU output ranges, per-graph activation bits, per-block
    sensitivity and placement under the budget (§3.4) — every measurement on the
    deployed arithmetic (``quantkit.runtime.qdq``) at the precision the bundle will have —
    and the chosen arithmetic's point on the confirmation windows."""
    validation_ids, fp_ppl = held_out.search, held_out.fp_ppl
    layout = loaded.layout
    sensitivity_ids = validation_ids[: config.search.sensitivity_num_sequences, : config.search.sensitivity_seq_len]
    with meter.stage("output_ranges"):
        plan = build_shadow_plan(statistics, layout, config.shadow_config())
        weights, hessians = _int8_weights(layout, plan, calibration_ids, config, progress)
        precision = calibrated_precision(
            layout, plan, calibration_ids[:_OUTPUT_RANGE_SEQUENCES], config.search.activation_bits, weights=weights
        )  # also sets the output-side shadow channels
        plan.save(staging / PLAN_FILE)

    measured_realizations: dict[tuple, torch.Tensor] = {}  # (graph bits, CPU blocks, count, windows) → per-window NLL draws: each point is measured once

    def deployed(precision: PrecisionPlan, cpu_blocks: frozenset[int], candidate_weights: WeightCodes | None):
        return simulated_quantization(
            layout, plan, precision, blocks=set(range(layout.num_blocks)) - cpu_blocks, weights=weights if candidate_weights is None else candidate_weights
        )

    def realizations_of(
        precision: PrecisionPlan,
        cpu_blocks: frozenset[int],
        count: int,
        candidate_weights: WeightCodes | None = None,
        desc: str = "quantkit PPL",
        windows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean NLL per window [count, N] of the deployed arithmetic, on ``windows`` (default: the search's)."""
        windows = validation_ids if windows is None else windows
        key = (tuple((name, g.activation_bits, g.weight_bits) for name, g in sorted(precision.graphs.items())), cpu_blocks, count, windows is validation_ids)
        if key not in measured_realizations:
            with deployed(precision, cpu_blocks, candidate_weights):
                measured_realizations[key] = nll_realizations(layout, windows, count, progress=progress)
            log.info("%s: %s realizations %s", desc, count, ", ".join(f"{math.exp(float(v.mean())):.3f}" for v in measured_realizations[key]))
        return measured_realizations[key]

    def deployed_perplexity(
        precision: PrecisionPlan,
        cpu_blocks: frozenset[int] = frozenset(),
        desc: str = "quantkit PPL",
        candidate_weights: WeightCodes | None = None,
        realizations: int = 1,
    ) -> float:
        # with realizations > 1 the expected draw, not one draw (sensitivity/realizations.py)
        return _point(realizations_of(precision, cpu_blocks, realizations, candidate_weights, desc), held_out.search_fp_nll)["ppl"]

    @functools.cache
    def reference() -> FpReference:  # the FP run over the sensitivity windows, made once when first needed
        return fp_reference(layout, sensitivity_ids)

    a8_blocks: dict[int, BlockSensitivity] = {}  # each block alone at A8, when the search measured them
    if config.search.activation_bits == "auto":
        with meter.stage("precision_search"):

            def sensitivity() -> dict[str, float]:  # only if every graph at A8 is over
                # every block alone at A8, then every graph alone of the blocks that hold most of that loss
                every_graph_a8 = precision.with_uniform_bits(8)
                for measured in block_sensitivity(layout, plan, every_graph_a8, sensitivity_ids, progress=progress, weights=weights, reference=reference()):
                    a8_blocks[measured.block] = measured
                candidates = sensitive_block_graphs(precision, {block: measured.kl for block, measured in a8_blocks.items()})
                return graph_sensitivity(layout, plan, precision, sensitivity_ids, weights, progress=progress, graphs=candidates, reference=reference())

            evaluate = lambda p: _point(
                realizations_of(p, frozenset(), config.search.search_realizations, desc=f"quantkit PPL (A8 share {p.a8_mac_share():.0%})"),
                held_out.search_fp_nll,
            )  # noqa: E731
            search_activation_bits(precision, sensitivity, evaluate, fp_ppl, config.search.accuracy_budget)
    if config.weights.weight_bits in ("4", "auto"):
        int8_weights, int8_clips = weights, {name: dict(graph.output_clips_) for name, graph in precision.graphs.items()}
        with meter.stage("weights_4bit"):
            block_size = config.weights.weight_block_size or None
            weights = assign_four_bit_weights(
                layout,
                plan,
                precision,
                weights,
                calibration_ids,
                calibration_ids[:_OUTPUT_RANGE_SEQUENCES],
                block_size,
                config.weights.weight_rounding,
                config.statistics.batch_size,
                hessians,
                progress=progress,
                offsets=config.weights.weight_block_offsets,
                offset_graphs=config.weights.offset_graph_kinds,
                bytes_budget=config.weights.weight_bytes_budget or None,
                sensitivity_ids=sensitivity_ids,
            )
        if config.weights.weight_bits == "auto":
            four_bit = weights
            with meter.stage("weight_search"):
                candidates = [name for name, graph in precision.graphs.items() if graph.weight_bits == 4]
                sensitivity = graph_sensitivity(layout, plan, precision, sensitivity_ids, four_bit, progress=progress, graphs=candidates, label="W4")

                def weights_of(p: PrecisionPlan) -> WeightCodes:
                    return {name: (four_bit if p.of(name).weight_bits == 4 else int8_weights)[name] for name in layout.linear_names()}

                evaluate = lambda p: deployed_perplexity(p, desc=f"quantkit PPL (W4 share {p.w4_mac_share():.0%})", candidate_weights=weights_of(p))  # noqa: E731
                search_weight_bits(precision, sensitivity, int8_clips, evaluate, fp_ppl, config.search.accuracy_budget)
                weights = weights_of(precision)
    save_weights({name: weights[name] for name in layout.linear_names()}, staging / WEIGHTS_FILE)  # export serialises exactly these
    precision.save(staging / PRECISION_FILE)
    with meter.stage("sensitivity"):
        # a block whose graphs all kept A8 and INT8 weights was measured by the search as it ships
        unchanged = {
            block
            for block in a8_blocks
            if config.weights.weight_bits == "8" and all(g.activation_bits == 8 for g in precision.graphs.values() if g.block_index == block)
        }
        remeasured = block_sensitivity(
            layout,
            plan,
            precision,
            sensitivity_ids,
            progress=progress,
            weights=weights,
            blocks=set(range(layout.num_blocks)) - unchanged,
            reference=reference(),
        )
        sensitivities = sorted([a8_blocks[block] for block in unchanged] + remeasured, key=lambda measured: measured.block)
        (staging / SENSITIVITY_FILE).write_text(json.dumps([s.to_dict() for s in sensitivities], indent=1))
    # With A8 graphs a single perplexity is one rounding draw: placement measures the mean
    # of the search's realizations too (and reuses the search's own measurement of the chosen point).
    # Every graph A16: the draws agree to the third decimal (SmolLM2 W4A16: 21.210 three times), one is measured.
    any_a8 = any(g.activation_bits == 8 for g in precision.graphs.values())
    draws = config.search.search_realizations if any_a8 else 1
    with meter.stage("placement"):
        placement = plan_placement(
            sensitivities,
            lambda cpu: deployed_perplexity(precision, cpu, f"quantkit PPL ({len(cpu)} CPU blocks)", realizations=draws),
            fp_ppl,
            config.search.accuracy_budget,
        )
        placement.save(staging / PLACEMENT_FILE)
    with meter.stage("confirmation"):  # the chosen arithmetic on windows the decisions never saw
        cpu_blocks = frozenset(placement.cpu_block_indices)
        confirmation_nll = realizations_of(precision, cpu_blocks, _REALIZATIONS if any_a8 else 1, windows=held_out.confirmation)
        realizations = {
            "search": _point(realizations_of(precision, cpu_blocks, draws), held_out.search_fp_nll),  # measured by placement already
            "confirmation": _point(confirmation_nll, held_out.confirmation_fp_nll),
            "confirmation_fp": math.exp(float(held_out.confirmation_fp_nll.double().mean())),
            "confirmation_draws": [math.exp(float(draw.mean())) for draw in confirmation_nll],
        }
    npu_linears = [name for graph in precision.graphs.values() if graph.block_index in placement.npu_block_indices for name in graph.linear_names]
    weight_bytes = (sum(weights[name].nbytes for name in npu_linears), int8_weight_bytes(layout, npu_linears))
    return plan, precision, sensitivities, placement, realizations, weight_bytes


def _release_model(loaded) -> None:
    """Drop the model from ``loaded`` (its weights, memory-mapped from the checkpoint, leave
    the process once nothing else holds them); the tokenizer and the source record stay."""
    loaded.model = loaded.layout = None
    release_freed_memory()


def _aimet_baseline(
    loaded, calibration_ids: torch.Tensor, validation_ids: torch.Tensor, config: CalibrationConfig, staging: Path, meter: StageMeter, progress: bool
) -> tuple[dict, float]:
    """AIMET W8A8 encodings (written as 1.0.0 + quantizer state) and their perplexity.
    The last use of the FP model: AIMET's quantizers go into it in place (no second copy
    of the weights), so it is no longer the FP model afterwards."""
    device = next(loaded.model.parameters()).device
    with meter.stage("aimet_encodings"):
        sim = build_w8a8_quantsim(loaded.model, calibration_ids[:1].to(device), config.aimet.aimet_config, in_place=True)
        compute_w8a8_encodings(sim, calibration_ids[: config.aimet.aimet_num_sequences], progress=progress)
        encodings = quantsim_encodings_1_0_0(sim)
        write_encodings(encodings, staging / ENCODINGS_FILE)
        save_quantizer_state(sim, staging / QUANTIZER_STATE_FILE)
    with meter.stage("aimet_eval"):
        ppl = perplexity(lambda ids: sim.model(ids.to(device)), validation_ids, desc="AIMET W8A8 perplexity", progress=progress)
    return encodings, ppl


def calibrate(
    out: str | Path = "calib", config: CalibrationConfig | None = None, *, overwrite: bool = False, restart: bool = False, progress: bool = True
) -> CalibrationResult:
    """Calibrate ``config.model`` on ``config.data`` and write the results to ``out``.

    Writes ``statistics.safetensors`` + ``statistics.json`` (activation statistics of
    every decoder Linear), ``shadow_plan.json``, ``sensitivity.json`` and
    ``placement.json`` (quantkit's scheme), ``encodings.json`` + ``aimet_quantizers.safetensors``
    (the AIMET W8A8 baseline), ``summary.json`` / ``summary.txt`` (FP vs quantkit vs W8A8
    perplexity, placement, top outlier layers, time, memory), ``report/`` (``index.html``
    with its PNG plots, see ``quantkit.report``) and ``config.json``.

    >>> from quantkit.calibration import calibrate, CalibrationConfig
    >>> result = calibrate("calib", CalibrationConfig.preset(num_sequences=8))  # doctest: +SKIP
    >>> print(result.summary)                                              # doctest: +SKIP
    """
    config = config or CalibrationConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise QuantkitError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    staging = out.parent / f".{out.name}.partial"
    if restart and staging.exists():
        shutil.rmtree(staging)
    meter = StageMeter()
    started = time.perf_counter()

    with meter.stage("load"):
        log.info("loading model %s", config.model)
        loaded = load_model(config.model, config.device, rotation=config.rotation)
        calibration_ids = token_sequences(
            loaded.tokenizer,
            load_documents(config.data, "calibration"),
            config.statistics.num_sequences,
            config.statistics.seq_len,
            source=f"--data {config.data} (calibration split)",
        )
        # the search's windows, then as many again to confirm its decision on (one cut: disjoint)
        windows = token_sequences(
            loaded.tokenizer,
            load_documents(config.data, "validation"),
            2 * config.evaluation.eval_num_sequences,
            config.evaluation.eval_seq_len,
            source=f"--data {config.data} (validation split)",
        )
        validation_ids, confirmation_ids = windows[: config.evaluation.eval_num_sequences], windows[config.evaluation.eval_num_sequences :]
    # Only now is there work to resume: a run that fails to load its model or text leaves nothing behind.
    resuming = staging.exists()
    staging.mkdir(parents=True, exist_ok=True)
    try:
        return _calibrate_loaded(out, staging, config, loaded, calibration_ids, windows, validation_ids, confirmation_ids, meter, started, progress)
    except BaseException:
        if not resuming and not (staging / "checkpoint" / "progress.json").is_file():
            shutil.rmtree(staging, ignore_errors=True)  # failed before its first checkpoint: nothing to resume
        raise


def _calibrate_loaded(
    out: Path,
    staging: Path,
    config: CalibrationConfig,
    loaded,
    calibration_ids: torch.Tensor,
    windows: torch.Tensor,
    validation_ids: torch.Tensor,
    confirmation_ids: torch.Tensor,
    meter: StageMeter,
    started: float,
    progress: bool,
) -> CalibrationResult:
    """``calibrate`` once the model and its text are loaded, built in ``staging``."""
    device = next(loaded.model.parameters()).device
    with meter.stage("statistics"):
        statistics = collect_activation_statistics(
            loaded.layout,
            calibration_ids,
            batch_size=config.statistics.batch_size,
            outlier_quantile=config.outliers.outlier_quantile,
            checkpoint_dir=staging / "checkpoint",
            fingerprint=_fingerprint(config, loaded.source_sha256, calibration_ids),
            progress=progress,
            skip_positions=config.outliers.sink_tokens,
        )
        statistics.save(staging, metadata={"model": config.model, "source_sha256": loaded.source_sha256, "outlier_quantile": config.outliers.outlier_quantile})
    with meter.stage("fp_eval"):
        fp_model = LogitsModel(loaded.model)
        fp_nll = sequence_nll(lambda ids: fp_model(ids.to(device)), windows, desc="FP perplexity", progress=progress)
        fp_model = None  # nothing but ``loaded`` holds the model (see _release_model)
        held_out = _HeldOut(validation_ids, fp_nll[: config.evaluation.eval_num_sequences], confirmation_ids, fp_nll[config.evaluation.eval_num_sequences :])
        perplexities = {"fp": held_out.fp_ppl}
    plan, precision, sensitivities, placement, realizations, weight_bytes = _plan_quantization(
        loaded, statistics, calibration_ids, held_out, config, staging, meter, progress
    )
    config.save(staging / "config.json")
    perplexities["quantkit_simulated"] = placement.ppl_
    out_features = {name: loaded.layout.linear(name).out_features for name in loaded.layout.linear_names()}
    model_parameters = sum(p.numel() for p in loaded.model.parameters())  # before AIMET adds its quantizers' own
    num_blocks = loaded.layout.num_blocks
    top_layers = rank_outlier_layers(statistics, loaded.layout)[:_TOP_LAYERS]
    (staging / "report").mkdir(exist_ok=True)
    plot_outlier_heatmap(statistics, loaded.layout, staging / HEATMAP_FILE)
    # What ships: the calibration exported into a scratch bundle and run through the runtime.
    # Exported first (from the FP model in memory), then AIMET's baseline (its quantizers go
    # into the same model), then the model is released, and only then is the bundle loaded:
    # the runtime's memory never adds to the model's.
    with tempfile.TemporaryDirectory(prefix=".bundle-check-", dir=staging) as scratch:
        with meter.stage("bundle_export"):
            bundle = export_check_bundle(staging, Path(scratch) / "bundle", config.evaluation.bundle_chunk_size, loaded, config.device, progress)
        encodings, aimet_ppl = _aimet_baseline(loaded, calibration_ids, validation_ids, config, staging, meter, progress)
        _release_model(loaded)
        with meter.stage("bundle_perplexity"):
            perplexities["quantkit"] = bundle_perplexity(bundle, validation_ids, progress)
    perplexities = {key: perplexities[key] for key in ("fp", "quantkit", "quantkit_simulated")} | {"aimet_w8a8_per_tensor": aimet_ppl}

    meter.seconds["total"] = time.perf_counter() - started
    peak = meter.run_peak_mb()
    resident = plan.resident_shadow_parameters(out_features, blocks=placement.npu_block_indices)
    summary = format_summary(
        config.model,
        perplexities,
        top_layers,
        config.outliers.outlier_quantile,
        meter.seconds,
        peak,
        placement,
        resident / model_parameters,
        precision,
        realizations,
        weight_bytes,
        loaded.rotation,
        config.search.search_realizations,
        config.evaluation.bundle_chunk_size,
        meter.peak_mb,
    )
    (staging / SUMMARY_TEXT).write_text(summary + "\n")
    (staging / SUMMARY_JSON).write_text(
        json.dumps(
            {
                "model": config.model,
                "source_sha256": loaded.source_sha256,
                "validation_tokens": list(validation_ids.shape),
                "calibration_tokens": list(calibration_ids.shape),
                "perplexity": perplexities,
                "prediction": realizations[
                    "search"
                ],  # the chosen arithmetic on the search's windows: ppl, ppl_lower, ppl_upper (one-sided 95% bounds over windows)
                "confirmation": {**realizations["confirmation"], "fp": realizations["confirmation_fp"], "windows": list(confirmation_ids.shape)},
                "quantkit_rounding_realizations": realizations["confirmation_draws"],  # on the confirmation windows
                "bundle_chunk_size": config.evaluation.bundle_chunk_size,  # perplexity["quantkit"]: the bundle exported at this chunk size, through the runtime
                "npu_blocks": placement.npu_blocks,
                "rotation": loaded.rotation.to_dict() if loaded.rotation else None,
                "activation_bits": precision.mode,
                "a8_mac_share": precision.a8_mac_share(placement.npu_block_indices),
                "graph_activation_bits": {g.name: g.activation_bits for g in precision.graphs.values() if g.block_index in placement.npu_block_indices},
                "weight_bits": precision.weight_bits(),
                "graph_weight_bits": {g.name: g.weight_bits for g in precision.graphs.values() if g.block_index in placement.npu_block_indices},
                "npu_weight_bytes": weight_bytes[0],
                "npu_weight_bytes_vs_int8": weight_bytes[1] and weight_bytes[0] / weight_bytes[1],
                "num_blocks": num_blocks,
                "resident_shadow_parameters": resident,
                "model_parameters": model_parameters,
                "num_activation_encodings": len(encodings["activation_encodings"]),
                "num_param_encodings": len(encodings["param_encodings"]),
                "top_outlier_layers": [
                    {
                        "layer": r.site,
                        "shared_with": list(r.shared_with),
                        "absmax": r.absmax,
                        "clip": r.clip,
                        "scale": r.scale,
                        "absmax_over_scale": r.importance,
                        "outlier_channels": r.num_outlier_channels,
                    }
                    for r in top_layers
                ],
                "seconds": meter.seconds,
                "stage_peak_memory_mb": meter.peak_mb,  # each stage's own peak resident memory
                "peak_memory_mb": peak,
            },
            indent=2,
        )
    )
    write_report(staging / "report", calib=staging)  # index.html beside the heat-map; draws the sensitivity plot
    shutil.rmtree(staging / "checkpoint")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return CalibrationResult(out=out, perplexities=perplexities, top_layers=top_layers, summary=summary)

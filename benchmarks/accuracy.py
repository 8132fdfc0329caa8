"""Accuracy benchmark: FP, naive W8A8, W8A16 and W4A16 (AIMET), SmoothQuant with static
activations, LLM.int8() and quantkit at all-A16, all-A8 and its calibrated per-graph
activation bits, with INT8 weights and with 4-bit weights (per channel, LPBQ blocks of
64 and 32, with block offsets on every graph, on the MLP graphs or within --bytes-budget (0.55) of
the INT8 bytes, and on the A16 graphs of the calibrated mix), measured side by side in one run on the
held-out enwiki test split (articles in neither the calibration nor the validation split).
The quantkit rows are bundles: each variant exported and run through the runtime.

    python benchmarks/accuracy.py [--model smollm2-135m] [--out benchmarks/results]

Writes OUT/accuracy.json ({"model", "rows": [{"method", "ppl", "ppl_simulated" (quantkit rows), "npu_blocks",
"shadow_bytes", "a8_mac_share", "weight_bits", "npu_weight_bytes"}, ...]}) and OUT/accuracy.md. ``a8_mac_share`` is the
share of the NPU Linears' MACs whose activations are INT8 (None where nothing runs as a
static NPU graph). The calibration it needs is made by ``quantkit.calibration.calibrate``
(default settings) into OUT/calib-<model>, or reused with --calib.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from quantkit.eval.perplexity import perplexity
from quantkit.runtime.bundle import DEFAULT_CHUNK_SIZE
from quantkit.runtime.qdq import packed_weight_bytes

from quantkit.baselines import llm_int8_simulation, smoothquant_simulation
from quantkit.calibration import ActivationStatistics, CalibrationConfig, calibrate
from quantkit.calibration.aimet_baseline import (
    QUANTIZER_STATE_FILE,
    LogitsModel,
    build_quantsim,
    build_w8a8_quantsim,
    compute_w8a8_encodings,
    load_quantizer_state,
)
from quantkit.calibration.bundle_perplexity import bundle_perplexity
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.export import export_bundle
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan, simulated_quantization
from quantkit.outlier_shadow.plan import PLAN_FILE
from quantkit.precision import PRECISION_FILE, PrecisionPlan, assign_four_bit_weights
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan
from quantkit.weights import WEIGHTS_FILE, collect_input_hessians, quantized_weights, save_weights

DEFAULT_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--calib", default=None, help="reuse this calibration folder instead of calibrating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--test-sequences", type=int, default=8)
    parser.add_argument("--test-seq-len", type=int, default=512)
    parser.add_argument(
        "--bytes-budget", type=float, default=0.55, help="NPU weight bytes of the budgeted int4-offset row, a fraction of INT8's (--weight-bytes-budget)"
    )
    parser.add_argument("--alphas", default=",".join(map(str, DEFAULT_ALPHAS)), help="SmoothQuant α values swept on the validation split")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    calib = Path(args.calib) if args.calib else out / f"calib-{Path(args.model).name}"
    if not args.calib:
        # the defaults, but the per-graph precision search on: its all-A8 and all-A16 variants come from the same calibration
        calibrate(calib, CalibrationConfig.preset(model=args.model, device=args.device, activation_bits="auto"), overwrite=True)
    config = CalibrationConfig.load(calib / "config.json")
    if config.model != args.model:
        raise SystemExit(f"{calib} was calibrated for {config.model}, not {args.model}")
    if config.rotation != "none":  # its plan is in the rotated basis; the baselines here run on the original weights
        raise SystemExit(
            f"{calib} was calibrated with --rotation {config.rotation}; this benchmark compares on the original basis: pass a calibration made with --rotation none"
        )

    loaded = load_model(args.model, args.device)
    layout, device = loaded.layout, next(loaded.model.parameters()).device
    logits = LogitsModel(loaded.model)
    forward = lambda ids: logits(ids.to(device))  # noqa: E731
    test_ids = token_sequences(loaded.tokenizer, load_documents(config.data, "test"), args.test_sequences, args.test_seq_len, source="test split")
    validation_ids = token_sequences(
        loaded.tokenizer,
        load_documents(config.data, "validation"),
        config.evaluation.eval_num_sequences,
        config.evaluation.eval_seq_len,
        source="validation split",
    )
    statistics = ActivationStatistics.load(calib)
    plan = ShadowPlan.load(calib / PLAN_FILE)
    precision = PrecisionPlan.load(calib / PRECISION_FILE)
    placement = PlacementPlan.load(calib / PLACEMENT_FILE)
    num_blocks = layout.num_blocks
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    out_features = {name: layout.linear(name).out_features for name in layout.linear_names()}
    rows = []

    def test_ppl(name: str, fn=forward) -> float:
        return perplexity(fn, test_ids, desc=f"{name} test PPL")

    rows.append({"method": "fp", "ppl": test_ppl("fp"), "npu_blocks": 0, "shadow_bytes": 0, "a8_mac_share": None})

    def quantsim_ppl(name: str, sim) -> float:
        return test_ppl(name, lambda ids: sim.model(ids.to(device)))

    w8a8 = build_w8a8_quantsim(loaded.model, test_ids[:1].to(device), config.aimet.aimet_config)
    load_quantizer_state(w8a8, calib / QUANTIZER_STATE_FILE)
    rows.append({"method": "naive_w8a8", "ppl": quantsim_ppl("naive_w8a8", w8a8), "npu_blocks": num_blocks, "shadow_bytes": 0, "a8_mac_share": 1.0})
    del w8a8

    # AIMET with 16-bit activations and min/max ranges, on the sequences calibration gave AIMET's W8A8.
    aimet_ids = token_sequences(
        loaded.tokenizer, load_documents(config.data, "calibration"), config.aimet.aimet_num_sequences, config.statistics.seq_len, source="calibration split"
    )
    w8a16 = build_quantsim(loaded.model, aimet_ids[:1].to(device), config.aimet.aimet_config, activation_bits=16)
    compute_w8a8_encodings(w8a16, aimet_ids)
    rows.append({"method": "naive_w8a16", "ppl": quantsim_ppl("naive_w8a16", w8a16), "npu_blocks": num_blocks, "shadow_bytes": 0, "a8_mac_share": 0.0})
    del w8a16
    # The AI Hub-style w4a16: AIMET QuantSim, 4-bit per-channel weights, 16-bit activations, min/max.
    w4a16 = build_quantsim(loaded.model, aimet_ids[:1].to(device), config.aimet.aimet_config, activation_bits=16, weight_bits=4)
    compute_w8a8_encodings(w4a16, aimet_ids)
    rows.append(
        {
            "method": "naive_w4a16",
            "ppl": quantsim_ppl("naive_w4a16", w4a16),
            "npu_blocks": num_blocks,
            "shadow_bytes": 0,
            "a8_mac_share": 0.0,
            "weight_bits": 4,
            "npu_weight_bytes": sum(packed_weight_bytes(layout.linear(n).out_features, layout.linear(n).in_features, 4) for n in layout.linear_names()),
        }
    )
    del w4a16

    alphas = [float(a) for a in args.alphas.split(",")]
    sweep = {}
    for alpha in alphas:
        with smoothquant_simulation(layout, statistics, alpha):
            sweep[alpha] = perplexity(forward, validation_ids, desc=f"SmoothQuant α={alpha} validation PPL")
    best_alpha = min(sweep, key=sweep.get)
    with smoothquant_simulation(layout, statistics, best_alpha):
        rows.append(
            {
                "method": "smoothquant_static",
                "ppl": test_ppl("smoothquant_static"),
                "npu_blocks": num_blocks,
                "shadow_bytes": 0,
                "a8_mac_share": 1.0,
                "alpha": best_alpha,
                "validation_sweep": sweep,
            }
        )

    with llm_int8_simulation(layout):
        # Dynamic per-token scales and run-time FP columns: not a static NPU graph.
        rows.append({"method": "llm_int8", "ppl": test_ppl("llm_int8"), "npu_blocks": None, "shadow_bytes": None, "a8_mac_share": None, "threshold": 6.0})

    # quantkit: the deployed arithmetic (runtime/qdq.py) of the bundle's NPU graphs, on the placement's NPU blocks.
    npu = placement.npu_block_indices
    shadow_bytes = plan.resident_shadow_parameters(out_features, blocks=npu) * 4  # float32 columns
    w8 = quantized_weights(layout, layout.linear_names(), plan.config.weight_scale_rule)
    npu_linears = [name for site in plan.sites.values() if site.block_index in npu for name in site.linear_names]
    calibrated = {"16": "quantkit_w8a16", "8": "quantkit_w8a8"}.get(precision.mode, f"quantkit_{precision.mode}")
    variants = {"quantkit_w8a16": (precision.with_uniform_bits(16), w8), "quantkit_w8a8": (precision.with_uniform_bits(8), w8)}
    variants[calibrated] = (precision, w8)  # a uniform calibration is its own row, measured once
    # 4-bit weights on every A16 graph (GPTQ against one set of calibration Hessians), the output ranges recorded again
    calibration_ids = token_sequences(
        loaded.tokenizer, load_documents(config.data, "calibration"), config.statistics.num_sequences, config.statistics.seq_len, source="calibration split"
    )
    hessians = collect_input_hessians(layout, plan, calibration_ids, config.statistics.batch_size)
    sensitivity_ids = validation_ids[: config.search.sensitivity_num_sequences, : config.search.sensitivity_seq_len]  # as calibration measures graphs
    # (activation bits, LPBQ block, block offsets, graph kinds with offsets, NPU weight bytes budget as a fraction of INT8's)
    every_kind = {"qkv", "o", "gate_up", "down"}
    four_bit = {
        "quantkit_w4a16": (16, None, "none", every_kind, None),
        "quantkit_w4a16_block64": (16, 64, "none", every_kind, None),
        "quantkit_w4a16_block32": (16, 32, "none", every_kind, None),
        "quantkit_w4a16_block32_offsets": (16, 32, "int8", every_kind, None),
        "quantkit_w4a16_block32_int4_offsets": (16, 32, "int4", every_kind, None),
        "quantkit_w4a16_block32_int4_offsets_mlp": (16, 32, "int4", {"gate_up", "down"}, None),
        f"quantkit_w4a16_block32_int4_offsets_{100 * args.bytes_budget:.0f}pct": (16, 32, "int4", every_kind, args.bytes_budget),
    }
    if precision.mode == "auto":  # the calibrated A8/A16 mix, INT4 on its A16 graphs
        four_bit[f"quantkit_w4_{calibrated.removeprefix('quantkit_')}_block32"] = ("calibrated", 32, "none", every_kind, None)
    for method, (bits, block, offsets, offset_graphs, budget) in four_bit.items():
        four = precision if bits == "calibrated" else precision.with_uniform_bits(bits)
        four = PrecisionPlan.from_dict(four.to_dict())  # a copy: the rows above keep INT8 weights
        weights = assign_four_bit_weights(
            layout,
            plan,
            four,
            w8,
            calibration_ids,
            calibration_ids[:4],
            block,
            "gptq",
            config.statistics.batch_size,
            hessians,
            offsets=offsets,
            offset_graphs=offset_graphs,
            bytes_budget=budget,
            sensitivity_ids=sensitivity_ids,
        )
        variants[method] = (four, weights)
    for method, (bits, weights) in variants.items():
        with simulated_quantization(layout, plan, bits, blocks=npu, weights=weights):
            simulated = test_ppl(f"{method} (simulated)")
        shipped = _shipped_perplexity(calib, bits, {n: weights[n] for n in layout.linear_names()}, test_ids, method)
        rows.append(
            {
                "method": method,
                "ppl": shipped,
                "ppl_simulated": simulated,
                "npu_blocks": len(npu),
                "shadow_bytes": shadow_bytes,
                "a8_mac_share": bits.a8_mac_share(npu),
                "activation_bits": bits.mode,
                "weight_bits": bits.weight_bits(),
                "npu_weight_bytes": sum(weights[n].nbytes for n in npu_linears),
                "calibrated": method == calibrated,
                "cpu_fp_blocks": sorted(set(range(num_blocks)) - npu),
                "hot_coverage": plan.hot_coverage_,
            }
        )

    fp = rows[0]["ppl"]
    for row in rows:
        row["delta_ppl_percent"] = 100 * (row["ppl"] / fp - 1)
    result = {
        "model": args.model,
        "test_tokens": list(test_ids.shape),
        "model_bytes": model_bytes,
        "num_blocks": num_blocks,
        "calibration": str(calib),
        "shadow_config": plan.config.to_dict(),
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    (out / "accuracy.json").write_text(json.dumps(result, indent=2))
    table = _markdown(result)
    (out / "accuracy.md").write_text(table)
    print(table)
    return 0


def _shipped_perplexity(calib: Path, precision: PrecisionPlan, weights, sequences, method: str) -> float:
    """A quantkit row as it ships: the calibration with this variant's precision plan and
    NPU weights, exported at the default chunk size and run through the runtime."""
    with tempfile.TemporaryDirectory(prefix=f".{method}-", dir=calib.parent) as scratch:
        variant = Path(scratch)
        for name in ("config.json", PLAN_FILE, PLACEMENT_FILE):
            shutil.copy(calib / name, variant / name)
        precision.save(variant / PRECISION_FILE)
        save_weights(weights, variant / WEIGHTS_FILE)
        return bundle_perplexity(export_bundle(variant, variant / "bundle", chunk_size=DEFAULT_CHUNK_SIZE), sequences)


def _share(row: dict) -> str:
    return "n/a" if row.get("a8_mac_share") is None else f"{100 * row['a8_mac_share']:.0f}%"


def _markdown(result: dict) -> str:
    lines = [
        f"# Accuracy — {result['model']}, enwiki test split ({result['test_tokens'][0]}×{result['test_tokens'][1]} tokens)",
        "",
        "| method | test PPL | ΔPPL vs FP | simulated | blocks on NPU | NPU MACs at A8 | NPU weight bytes | resident shadow weights |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        blocks = "n/a (dynamic)" if row["npu_blocks"] is None else f"{row['npu_blocks']}/{result['num_blocks']}"
        shadow = "n/a" if row["shadow_bytes"] is None else f"{row['shadow_bytes'] / 1e6:.2f} MB ({100 * row['shadow_bytes'] / result['model_bytes']:.2f}%)"
        extra = f" (α={row['alpha']})" if "alpha" in row else " (calibrated)" if row.get("calibrated") else ""
        bits = "W4/W8" if row.get("weight_bits") == "mixed" else f"W{row.get('weight_bits')}"
        weight = (
            f"{row['npu_weight_bytes'] / 1e6:.1f} MB ({bits})"
            if row.get("npu_weight_bytes")
            else "n/a"
            if row["npu_blocks"] is None or not row["npu_blocks"]
            else "W8"
        )
        simulated = f"{row['ppl_simulated']:.3f}" if "ppl_simulated" in row else ""
        lines.append(
            f"| {row['method']}{extra} | {row['ppl']:.3f} | {row['delta_ppl_percent']:+.2f}% | {simulated} | {blocks} | {_share(row)} | {weight} | {shadow} |"
        )
    lines += [
        "",
        "NPU MACs at A8: share of the NPU-placed Linears' multiply-accumulates whose activations are INT8 (the rest A16); "
        "n/a where nothing runs as a static NPU graph. naive_w8a16 / naive_w4a16 are AIMET QuantSim with 16-bit activations, "
        "INT8 / INT4 per-channel weights and min/max ranges on every Linear, the LM head included (naive_w4a16: AI Hub's w4a16 recipe). NPU weight bytes: codes packed at their "
        "bit-width plus scales (LPBQ: uint8 block scales too; block offsets: their codes and float32 scales).",
        "",
        f"The quantkit rows are what ships: each variant exported as a bundle (chunk {DEFAULT_CHUNK_SIZE}) and run through the runtime "
        "(ONNX Runtime CPU executor) on these tokens. The simulated column is calibration's torch twin of the same arithmetic "
        "(runtime/qdq.py), which the searches use: at A8 it is another rounding draw. quantkit_w8a16 / quantkit_w8a8 put every NPU graph at A16 / A8; the calibrated row "
        "has the per-graph bits of the calibration's precision.json. quantkit_w4* rows: INT4 weights (GPTQ-rounded on the "
        "calibration split) on every A16 graph — per output channel, or LPBQ blocks of 64 / 32 inputs (_offsets: plus an int8 "
        "offset per block with a scale per row, `--weight-block-offsets int8`; _int4_offsets: an int4 offset per block with a scale per row, "
        "`--weight-block-offsets int4`; _int4_offsets_mlp: the same on the gate_up and down graphs only, `--weight-block-offsets int4 --weight-block-offset-graphs gate_up,down`; _int4_offsets_<F>pct: int4 offsets on the graphs whose offsets lower the KL divergence from FP (each graph alone quantized, first 2 × 256 validation tokens) the most per byte, with the NPU weights at most F% of their INT8 bytes, `--weight-block-offsets int4 --weight-bytes-budget F/100`) — INT8 on A8 graphs (the HTP runs INT4 only with A16).",
        "",
        f"Model weights: {result['model_bytes'] / 1e6:.1f} MB (float32). Measured in one run of benchmarks/accuracy.py in {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

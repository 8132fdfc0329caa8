"""Prefill speed benchmark: five configurations measured side by side in one run on one
prompt of real text (held-out enwiki test split).

    python benchmarks/prefill.py [--model smollm2-135m] [--out benchmarks/results]

Configurations (tokens/s of a prefill that yields the KV cache and the last logits; the
``int8_*`` ones run the A8 graphs on int8 GEMMs, ``--cpu-kernels integer``):

- ``hf_fp32``: transformers' forward of the FP32 model, torch's default threads;
- ``runtime_fp``: the bundle runtime with every block placed on the CPU in FP;
- ``qdq_shadow_ooo``: the bundle's graphs run as written (``--cpu-kernels qdq``: every
  weight dequantized and multiplied in float), shadow path, out-of-order;
- ``int8_inorder``: NPU graphs without the shadow path, subgraphs in program order;
- ``int8_shadow_inorder``: with the shadow outlier path, in program order;
- ``int8_shadow_ooo``: with the shadow path, out-of-order on the two workers (§3.4).

Here the "NPU" is ONNX Runtime's CPU provider on one core (its graphs run on the NPU
worker's thread) and the CPU worker's torch ops get the other core; the FP
configurations may use both cores. Configurations alternate within each repeat and the
median is reported, so machine noise hits them alike. Writes OUT/prefill.json
({"prompt_tokens", "rows": [{"config", "tokens_per_s", ...}]}) and OUT/prefill.md. The
bundle is made with ``quantkit calibrate`` + ``quantkit export`` defaults into
OUT/calib-<model> and OUT/bundle-<model>, or given with --bundle (and --calib).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from quantkit.runtime.bundle import load_manifest
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.data.corpus import load_documents
from quantkit.export import export_bundle
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan

CONFIGS = ("hf_fp32", "runtime_fp", "qdq_shadow_ooo", "int8_inorder", "int8_shadow_inorder", "int8_shadow_ooo")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--bundle", default=None, help="reuse this bundle (its calibration folder via --calib)")
    parser.add_argument("--calib", default=None, help="reuse this calibration folder instead of calibrating")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def _prompt(tokenizer, length: int) -> torch.Tensor:
    ids: list[int] = []
    for document in load_documents("enwiki", "test"):
        ids += tokenizer(document)["input_ids"]
        if len(ids) >= length:
            return torch.tensor(ids[:length])
    raise SystemExit(f"the enwiki test split holds fewer than {length} tokens")


def _all_cpu_bundle(calib: Path, work: Path) -> Path:
    """The same calibration exported with every block placed on the CPU in FP."""
    copy = work / "calib-all-cpu"
    shutil.copytree(calib, copy)
    placement = PlacementPlan.load(copy / PLACEMENT_FILE)
    placement.placement = ["cpu-fp"] * len(placement.placement)
    placement.save(copy / PLACEMENT_FILE)
    return export_bundle(copy, work / "bundle-all-cpu", progress=False)


def _hf_runner(model_folder: str, ids: torch.Tensor):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()

    def run() -> dict:
        with torch.no_grad():
            began = time.perf_counter()
            model(input_ids=ids[None], use_cache=True, logits_to_keep=1)
            return {"seconds": time.perf_counter() - began}

    return run


def _runtime_runner(bundle: Path, ids: torch.Tensor, *, shadow: bool, schedule: str, cpu_threads: int = 1, kernels: str = "integer"):
    model = BundleModel(bundle, shadow=shadow, schedule=schedule, cpu_threads=cpu_threads, kernels=kernels)

    def run() -> dict:
        before = (model.counters.outlier_values, model.counters.cold_loads)
        result = model.run_prefill(ids, logits="last")
        schedule_run = result.schedule
        return {
            "seconds": result.seconds,
            "bubble_ratio": schedule_run.bubble_ratio,
            "critical_processor": schedule_run.critical_processor,
            "npu_busy_s": schedule_run.busy("npu"),
            "cpu_busy_s": schedule_run.busy("cpu"),
            "outlier_values": model.counters.outlier_values - before[0],
            "cold_loads": model.counters.cold_loads - before[1],
        }

    return run


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).name
    calib = Path(args.calib) if args.calib else out / f"calib-{name}"
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        if not (calib / "config.json").is_file():
            calibrate(calib, CalibrationConfig.preset(model=args.model))
        bundle = out / f"bundle-{name}"
        if not bundle.is_dir():
            export_bundle(calib, bundle)
    manifest = load_manifest(bundle)
    from quantkit.models.loading import load_model, prepare_model_folder

    model_folder, _ = prepare_model_folder(args.model)
    ids = _prompt(load_model(args.model).tokenizer, args.prompt_tokens)
    with tempfile.TemporaryDirectory(prefix="quantkit-prefill-") as work:
        runners = {
            "hf_fp32": _hf_runner(str(model_folder), ids),
            "runtime_fp": _runtime_runner(_all_cpu_bundle(calib, Path(work)), ids, shadow=False, schedule="inorder", cpu_threads=torch.get_num_threads()),
            "qdq_shadow_ooo": _runtime_runner(bundle, ids, shadow=True, schedule="ooo", kernels="qdq"),
            "int8_inorder": _runtime_runner(bundle, ids, shadow=False, schedule="inorder"),
            "int8_shadow_inorder": _runtime_runner(bundle, ids, shadow=True, schedule="inorder"),
            "int8_shadow_ooo": _runtime_runner(bundle, ids, shadow=True, schedule="ooo"),
        }
        for config, run in runners.items():  # warm-up: first runs pay for kernel set-up
            print(f"warm-up {config}", file=sys.stderr)
            run()
        measured: dict[str, list[dict]] = {config: [] for config in CONFIGS}
        for repeat in range(args.repeats):
            for config in CONFIGS:
                measured[config].append(runners[config]())
                print(f"repeat {repeat + 1}/{args.repeats} {config}: {args.prompt_tokens / measured[config][-1]['seconds']:.1f} tokens/s", file=sys.stderr)
    rows = []
    for config in CONFIGS:
        runs = sorted(measured[config], key=lambda r: r["seconds"])
        median = runs[len(runs) // 2]
        row = {
            "config": config,
            "tokens_per_s": args.prompt_tokens / median["seconds"],
            "seconds": median["seconds"],
            "seconds_all": [r["seconds"] for r in measured[config]],
        }
        row.update({k: v for k, v in median.items() if k != "seconds"})
        rows.append(row)
    by_config = {row["config"]: row["tokens_per_s"] for row in rows}
    result = {
        "model": args.model,
        "bundle_activation_bits": manifest["quantization"]["activation_bits"],
        "npu_blocks": manifest["placement"].count("npu"),
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "ratios": {
            "int8_shadow_ooo_over_hf_fp32": by_config["int8_shadow_ooo"] / by_config["hf_fp32"],
            "shadow_overhead_inorder": by_config["int8_inorder"] / by_config["int8_shadow_inorder"] - 1,
            "ooo_over_inorder": by_config["int8_shadow_ooo"] / by_config["int8_shadow_inorder"],
            "integer_over_qdq_kernels": by_config["int8_shadow_ooo"] / by_config["qdq_shadow_ooo"],
        },
        "rows": rows,
    }
    (out / "prefill.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Prefill of {args.prompt_tokens} tokens ({args.model}, median of {args.repeats}, {os.cpu_count()} CPU cores)",
        "",
        "| config | tokens/s | s | bubble ratio |",
        "|---|---|---|---|",
    ]
    for row in rows:
        bubble = f"{row['bubble_ratio']:.1%} ({row['critical_processor'].upper()})" if "bubble_ratio" in row else "–"
        lines.append(f"| {row['config']} | {row['tokens_per_s']:.1f} | {row['seconds']:.2f} | {bubble} |")
    ratios = result["ratios"]
    lines += [
        "",
        f"int8_shadow_ooo / hf_fp32 = {ratios['int8_shadow_ooo_over_hf_fp32']:.2f}×; shadow overhead (in order) = {ratios['shadow_overhead_inorder']:+.1%}; "
        f"out-of-order / in-order = {ratios['ooo_over_inorder']:.2f}×; integer / qdq kernels = {ratios['integer_over_qdq_kernels']:.2f}×",
    ]
    (out / "prefill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

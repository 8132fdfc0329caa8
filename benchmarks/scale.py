"""Scale benchmark: calibration and export cost of the model shapes users deploy.

    python benchmarks/scale.py --work DIR [--shapes smollm2-360m qwen2.5-0.5b llama-3.2-1b] [--out benchmarks/results] [-- CALIBRATE FLAGS]

Each shape below is a real model's configuration with seeded random weights (std 0.02,
transformers' own initialisation) and the built-in model's tokenizer (so its vocabulary,
49,152 tokens). Random weights measure time and memory, never accuracy. For each shape,
in its own processes: ``quantkit calibrate --model DIR/<shape>/model`` with the default
preset (and any extra flags, e.g. reduced token counts, which are recorded), then
``quantkit export``. Written: wall time and peak resident memory of both commands, each
calibration stage's seconds and peak memory (from its ``summary.json``), the bundle's
size and its largest graph. OUT/scale.json, OUT/scale.md and OUT/scale.png (cost against
parameters, log-log). A measured shape replaces the stored figures of the same shape and flags in
OUT/scale.json and keeps the others; each run records its flags and date. Compare times
of one invocation only: machines differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_MIB_IN_GB = 2**20 / 1e9  # memory is measured in MiB (kernel counters); GB here are 10^9 bytes, as the FP32 weights are

# Real configurations (their config.json), vocabulary replaced by the built-in tokenizer's.
SHAPES: dict[str, dict] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "smollm2-360m": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": True,
    },
    "llama-3.2-3b": {
        "model_type": "llama",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": True,
    },
}
_BUILTIN = "smollm2-135m"  # its tokenizer for every shape


def build_model(shape: str, folder: Path, tokenizer_folder: Path | None = None) -> int:
    """Write the random-weight model of ``shape`` to ``folder`` (once), with the tokenizer
    of ``tokenizer_folder`` (default: the built-in model's); return its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from quantkit.models.loading import prepare_model_folder

    if (folder / "config.json").is_file():
        return int(json.loads((folder / "quantkit_scale.json").read_text())["parameters"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or prepare_model_folder(_BUILTIN)[0])
    settings = dict(SHAPES[shape])
    config = AutoConfig.for_model(
        settings.pop("model_type"),
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **settings,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "quantkit_scale.json").write_text(json.dumps({"shape": shape, "parameters": parameters, "seed": 0}))
    partial.rename(folder)
    return parameters


def _timed_process(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, its peak resident MB)."""
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{command[3]} failed with exit code {process.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def measure(shape: str, work: Path, calibrate_flags: list[str], tokenizer_folder: Path | None = None) -> dict:
    """Build ``shape`` under ``work`` (once), calibrate and export it; its figures."""
    model = work / shape / "model"
    model.parent.mkdir(parents=True, exist_ok=True)
    parameters = build_model(shape, model, tokenizer_folder)
    calib, bundle = work / shape / "calib", work / shape / "bundle"
    quantkit = [sys.executable, "-m", "quantkit"]
    calibrate_wall, calibrate_peak = _timed_process([*quantkit, "calibrate", "--model", str(model), "--out", str(calib), "--overwrite", *calibrate_flags])
    export_wall, export_peak = _timed_process([*quantkit, "export", str(calib), "--out", str(bundle), "--overwrite"])
    summary = json.loads((calib / "summary.json").read_text())
    graphs = sorted((bundle / "npu").glob("*.onnx"), key=lambda p: p.stat().st_size)
    stages = {k: v for k, v in summary["seconds"].items() if k != "total"}
    return {
        "shape": shape,
        "parameters": parameters,
        "fp32_weights_gb": parameters * 4 / 1e9,
        "calibrate_seconds": calibrate_wall,
        # the calibration resets the kernel's high-water mark at every stage (quantkit/stages.py), so
        # the process's peak as wait4 reports it can be a later stage's; the run's own record is not
        "calibrate_peak_gb": max(calibrate_peak, summary["peak_memory_mb"]) * _MIB_IN_GB,
        "export_seconds": export_wall,
        "export_peak_gb": export_peak * _MIB_IN_GB,
        "stage_seconds": stages,
        "stage_peak_gb": {k: v * _MIB_IN_GB for k, v in summary.get("stage_peak_memory_mb", {}).items()},
        "dominant_stage": max(stages, key=stages.get),
        "bundle_gb": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e9,
        "largest_graph_mb": graphs[-1].stat().st_size / 1e6 if graphs else 0.0,
        "calibration_tokens": summary["calibration_tokens"],
        "calibrate_flags": calibrate_flags,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def write_results(record: dict, out: Path) -> str:
    """Write OUT/scale.json, OUT/scale.md and OUT/scale.png; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "| shape | parameters | FP32 weights (GB) | calibration tokens | calibrate (min) | calibrate peak (GB) | × FP32 weights | dominant stage | export (min) | export peak (GB) | bundle (GB) | largest graph (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for run in record["runs"]:
        lines.append(
            f"| {run['shape']} | {run['parameters'] / 1e9:.2f} B | {run['fp32_weights_gb']:.1f} | {run_label(run)} | {run['calibrate_seconds'] / 60:.1f} | "
            f"{run['calibrate_peak_gb']:.1f} | {run['calibrate_peak_gb'] / run['fp32_weights_gb']:.2f} | {run['dominant_stage']} | "
            f"{run['export_seconds'] / 60:.1f} | {run['export_peak_gb']:.1f} | {run['bundle_gb']:.2f} | {run['largest_graph_mb']:.0f} |"
        )
    lines.append("\n" + " ".join(sorted({f"{run['machine']}. {run.get('remark', '')}".rstrip() for run in record["runs"]})))
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    _plot(record["runs"], out / "scale.png")
    return "\n".join(lines)


def run_label(run: dict) -> str:
    """The calibration text of a run in a few words: "32 × 512 (default)", "8 × 256, validation 4 × 256"."""
    flags = dict(zip(run["calibrate_flags"][::2], run["calibrate_flags"][1::2], strict=True))
    label = "{} × {}".format(*run["calibration_tokens"]) + ("" if flags else " (default)")
    if "--eval-num-sequences" in flags or "--eval-seq-len" in flags:
        label += f", validation {flags.get('--eval-num-sequences', 8)} × {flags.get('--eval-seq-len', 512)}"
    return label


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 5.5))
    for flags in sorted({tuple(r["calibrate_flags"]) for r in runs}):  # one line per set of calibrate flags
        group = sorted((r for r in runs if tuple(r["calibrate_flags"]) == flags), key=lambda r: r["parameters"])
        parameters = [r["parameters"] for r in group]
        label = run_label(group[0])
        time_axis.loglog(parameters, [r["calibrate_seconds"] for r in group], "o-", label=f"calibrate ({label})")
        time_axis.loglog(parameters, [r["export_seconds"] for r in group], "s--", label=f"export ({label})")
        if len(group) > 1:  # the linear-growth line through the smallest shape
            time_axis.loglog(parameters, [group[0]["calibrate_seconds"] * p / parameters[0] for p in parameters], ":", color="gray", label="∝ parameters")
        memory_axis.loglog(parameters, [r["calibrate_peak_gb"] for r in group], "o-", label=f"calibrate peak ({label})")
        memory_axis.loglog(parameters, [r["export_peak_gb"] for r in group], "s--", label=f"export peak ({label})")
    every = sorted(runs, key=lambda r: r["parameters"])
    memory_axis.loglog([r["parameters"] for r in every], [r["fp32_weights_gb"] for r in every], ":", color="gray", label="FP32 weights")
    time_axis.set(xlabel="parameters", ylabel="wall seconds", title="time")
    memory_axis.set(xlabel="parameters", ylabel="peak resident GB", title="memory")
    for axis, corner in ((time_axis, "lower right"), (memory_axis, "upper left")):
        axis.legend(fontsize="x-small", loc=corner)
        axis.grid(True, which="both", alpha=0.3)
    figure.suptitle("one line per calibration text: sequences × tokens (and validation windows where reduced)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder the models, calibrations and bundles are written to (kept; models are reused)")
    parser.add_argument("--shapes", nargs="+", default=["smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b"], choices=list(SHAPES), help="model shapes, in order")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    parser.add_argument("--remark", default="", help="what else ran on the machine, recorded with the results")
    args, calibrate_flags = parser.parse_known_args(argv)  # anything else goes to every `quantkit calibrate`
    work, out = Path(args.work), Path(args.out)
    record = {"runs": []}
    if (out / "scale.json").is_file():  # runs of other shapes or flags are kept
        record["runs"] = json.loads((out / "scale.json").read_text())["runs"]
    for shape in args.shapes:  # the results are written after each shape: a long run keeps what it measured
        run = {**measure(shape, work, calibrate_flags), "remark": args.remark}
        record["runs"] = [r for r in record["runs"] if (r["shape"], r["calibrate_flags"]) != (shape, calibrate_flags)] + [run]
        table = write_results(record, out)
    print(table)


if __name__ == "__main__":
    main()

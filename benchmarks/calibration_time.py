"""Calibration time benchmark: the precision presets' `quantkit calibrate`, one after the
other on one machine, each with its wall time, the time of each stage and its peak memory.

    python benchmarks/calibration_time.py --work DIR [--runs w8a16 w8a8-mixed w8a8-mixed:1] [--out benchmarks/results]

Each run is ``PRESET`` or ``PRESET:THREADS`` (torch's intra-op threads, through
``OMP_NUM_THREADS``; default: torch's own choice). Every run is ``quantkit calibrate
--precision PRESET --out DIR/<run>`` in its own process on the default model and data; its
stages and peak memory come from the calibration's ``summary.json``, its plan from
``precision.json``. The calibration folders stay in DIR (export them to evaluate the plans).
Writes OUT/calibration_time.json and OUT/calibration_time.md, with each run's time as a
multiple of the first run's: compare runs of one invocation only (machines differ).
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


def _run(spec: str, work: Path, extra: list[str]) -> dict:
    preset, _, threads = spec.partition(":")
    out = work / spec.replace(":", "-threads")
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    command = [sys.executable, "-m", "quantkit", "calibrate", "--precision", preset, "--out", str(out), "--overwrite", *extra]
    print("$", " ".join(command), f"(threads {threads or 'default'})", flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - began
    summary = json.loads((out / "summary.json").read_text())
    return {
        "preset": preset,
        "threads": int(threads) if threads else None,
        "calibration": out.name,
        "wall_seconds": wall,
        "stage_seconds": summary["seconds"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "a8_mac_share": summary["a8_mac_share"],
        "graph_activation_bits": summary["graph_activation_bits"],
        "perplexity": summary["perplexity"],
        "prediction": summary.get("prediction"),
        "confirmation": summary.get("confirmation"),
        "rounding_realizations": summary.get("quantkit_rounding_realizations"),
    }


def write_results(record: dict, out: Path) -> str:
    """Write OUT/calibration_time.json and OUT/calibration_time.md; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_time.json").write_text(json.dumps(record, indent=1) + "\n")
    runs = record["runs"]
    first = runs[0]["wall_seconds"]
    stages = sorted(
        {stage for run in runs for stage in run["stage_seconds"] if stage != "total"}, key=lambda s: -max(r["stage_seconds"].get(s, 0) for r in runs)
    )
    header = "| run | threads | wall (min) | × first | peak RSS (GB) | NPU MACs at A8 | " + " | ".join(stages) + " |"
    lines = [header, "|" + "---|" * 2 + "---:|" * (4 + len(stages))]
    for run in runs:
        cells = [f"{run['stage_seconds'].get(stage, 0.0):.0f}" for stage in stages]
        lines.append(
            f"| {run['calibration']} | {run['threads'] or 'default'} | {run['wall_seconds'] / 60:.1f} | {run['wall_seconds'] / first:.2f} | "
            f"{run['peak_memory_mb'] / 1024:.1f} | {run['a8_mac_share']:.1%} | " + " | ".join(cells) + " |"
        )
    lines.append(f"\nStage columns in seconds. {record['model']}, {record['machine']}; runs one after the other in one invocation.")
    if record.get("remark"):
        lines.append(record["remark"])
    plans = {run["calibration"]: run["graph_activation_bits"] for run in runs if run["preset"] == runs[-1]["preset"]}
    if len(plans) > 1:
        lines.append(f"Same plan in every {runs[-1]['preset']} run: {len({json.dumps(p, sort_keys=True) for p in plans.values()}) == 1}")
    (out / "calibration_time.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder the calibrations are written to (kept)")
    parser.add_argument("--runs", nargs="+", default=["w8a16", "w8a8-mixed"], help="PRESET or PRESET:THREADS, in order (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    parser.add_argument("--remark", default="", help="what else ran on the machine, recorded with the results (e.g. beside which run)")
    args, extra = parser.parse_known_args(argv)  # anything else goes to every `quantkit calibrate`
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = [_run(spec, work, extra) for spec in args.runs]
    record = {
        "model": "smollm2-135m",
        "calibrate_flags": extra,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": runs,
        "remark": args.remark,
    }
    print(write_results(record, Path(args.out)))


if __name__ == "__main__":
    main()

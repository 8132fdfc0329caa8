"""QNN start-up benchmark: a bundle exported with ``--qnn-context`` on the QNN HTP backend,
its compiled EPContext models loaded (what a device does), against its QDQ graphs compiled
for the same target when it loads (``BundleModel(..., qnn_contexts=False)``) — side by side
in one run.

    python benchmarks/qnn_startup.py --calib DIR [--chunk-size 256] [--prompt-tokens 256] [--out benchmarks/results]

The bundle is exported here from the calibration in DIR (``--soc-model 60``, Snapdragon
8 Gen 3). Each way: the start-up time (``BundleModel(bundle, npu="qnn")``:
reading the bundle, compiling or loading every NPU graph) and the time to the first token
(start-up plus the prefill of ``--prompt-tokens`` tokens of the enwiki test split), and
whether both give the same next tokens (greedy, 8 new). On a workstation the HTP is
emulated on x86: the prefill times are the emulator's, not a device's; the start-up times
are what a device saves by not compiling. Writes OUT/qnn_startup.json and OUT/qnn_startup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import CalibrationConfig
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.export import export_bundle
from quantkit.models.loading import load_model

SOC_MODEL = 60  # Snapdragon 8 Gen 3


def _measure(bundle: Path, prompt: torch.Tensor, contexts: bool) -> dict:
    began = time.perf_counter()
    model = BundleModel(bundle, npu="qnn", qnn_contexts=contexts)
    load = time.perf_counter() - began
    began = time.perf_counter()
    model.prefill(prompt)
    prefill = time.perf_counter() - began
    tokens = list(model.generate(prompt, 8))
    return {
        "start_up_seconds": load,
        "prefill_seconds": prefill,
        "first_token_seconds": load + prefill,
        "graphs": len(model.npu_graph_files),
        "graphs_from_context": model.npu_context_graphs,
        "next_tokens": tokens,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", required=True, help="a calibration folder (`quantkit calibrate`)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--remark", default="", help="what else ran on the machine, recorded with the results")
    args = parser.parse_args(argv)
    calib = Path(args.calib)
    config = CalibrationConfig.load(calib / "config.json")
    tokenizer = load_model(config.model).tokenizer
    prompt = token_sequences(tokenizer, load_documents(config.data, "test"), 1, args.prompt_tokens, source="test split")[0]
    rows = {}
    with tempfile.TemporaryDirectory(prefix=".qnn-startup-", dir=calib.parent) as scratch:
        began = time.perf_counter()
        bundle = export_bundle(calib, Path(scratch) / "bundle", chunk_size=args.chunk_size, qnn_context=True, soc_model=SOC_MODEL)
        export_seconds = time.perf_counter() - began
        rows["EPContext models (--qnn-context)"] = _measure(bundle, prompt, contexts=True)
        rows["QDQ graphs compiled at start-up"] = _measure(bundle, prompt, contexts=False)
    record = {
        "model": config.model,
        "calibration": str(calib),
        "chunk_size": args.chunk_size,
        "prompt_tokens": args.prompt_tokens,
        "soc_model": SOC_MODEL,
        "export_seconds": export_seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "same_tokens": len({tuple(row["next_tokens"]) for row in rows.values()}) == 1,
        "remark": args.remark,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qnn_startup.json").write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record)
    (out / "qnn_startup.md").write_text(table)
    print(table)
    return 0


def markdown(record: dict) -> str:
    lines = [
        f"# QNN HTP start-up — {record['model']}, chunk {record['chunk_size']}, {record['prompt_tokens']}-token prompt",
        "",
        "| NPU graphs from | graphs (from contexts) | start-up (s) | prefill (s) | first token (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in record["rows"].items():
        lines.append(
            f"| {name} | {row['graphs']} ({row['graphs_from_context']}) | {row['start_up_seconds']:.1f} "
            f"| {row['prefill_seconds']:.1f} | {row['first_token_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Same next tokens both ways: {record['same_tokens']}. QNN HTP emulated on x86 ({record['machine']}); graphs compiled for soc_model "
        f"{record['soc_model']}; the export with --qnn-context took {record['export_seconds']:.0f} s. Measured by benchmarks/qnn_startup.py."
        + (f" {record['remark']}" if record.get("remark") else ""),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

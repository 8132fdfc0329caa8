"""Evaluation speed benchmark: lm-eval requests per second on the shipped suite's tasks,
measured side by side in one run on the same items.

    python benchmarks/eval_speed.py --bundle bundle/ [--limit 100] [--out benchmarks/results]

Rows:

- ``runtime_packed``: the ``quantkit`` lm-eval model as shipped (packed requests, shared
  contexts once, LM head only where scored; ``pack_tokens`` 2048; the A8 graphs on int8
  GEMMs, ``kernels=integer``);
- ``runtime_packed_qdq``: the same with every graph run as written (``kernels=qdq``: each
  weight dequantized and multiplied in float);
- ``runtime_unpacked``: the same bundle with one prefill per distinct input
  (``pack_tokens=0``), the way it ran before packing;
- ``fp_reference``: the FP model as the suite's reference runs it: ``hf-scored``
  (lm-eval's ``hf`` model with the LM head only at the scored positions,
  ``quantkit.eval.hf_reference``) with lm-eval's batching (``batch_size``, default 16;
  ``max_length`` 1024);
- ``fp_reference_hf``: the same through lm-eval's plain ``hf`` model.

Each row times ``lm_eval.simple_evaluate`` over the suite's three tasks (its
``task_data`` sizes) limited to ``--limit`` items each, and records the metrics: the two
runtime rows must agree exactly, the two FP rows within 1e-5 relative (float summation
order; the script says whether they do). Writes
OUT/eval_speed.json and OUT/eval_speed.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

TASKS = ("quantkit_wikitext", "quantkit_lastword", "quantkit_choice")


def _requests(results: dict) -> int:
    return sum(int(n.get("effective", n.get("original", 0))) for n in results.get("n-samples", {}).values())


def _run(model: str, model_args: str, limit: int, manager, batch_size) -> dict:
    import lm_eval

    began = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(TASKS),
        limit=limit,
        batch_size=batch_size,
        device="cpu",
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=False,
    )
    seconds = time.perf_counter() - began
    metrics = {task: {k: v for k, v in values.items() if isinstance(v, float) and "stderr" not in k} for task, values in results["results"].items()}
    return {"seconds": seconds, "items": _requests(results), "metrics": metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder (from `quantkit export`)")
    parser.add_argument("--reference", default="smollm2-135m", help="FP model for the hf row (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=100, help="items per task (default: %(default)s)")
    parser.add_argument("--batch-size", default="16", help="lm-eval batch size of the FP reference (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import quantkit.eval.hf_reference  # noqa: F401  (registers the hf-scored lm-eval model)
    import quantkit.eval.lm  # noqa: F401  (registers the quantkit lm-eval model)
    from quantkit.eval.tasks import TaskDataConfig, task_manager

    from quantkit.models.loading import prepare_model_folder

    manager = task_manager(TaskDataConfig(num_lastword=2000), include_defaults=False)  # the shipped suite's sizes
    folder, _ = prepare_model_folder(args.reference)
    rows = {
        "runtime_packed": _run("quantkit", f"bundle={args.bundle}", args.limit, manager, 1),
        "runtime_packed_qdq": _run("quantkit", f"bundle={args.bundle},kernels=qdq", args.limit, manager, 1),
        "runtime_unpacked": _run("quantkit", f"bundle={args.bundle},pack_tokens=0", args.limit, manager, 1),
        "fp_reference": _run("hf-scored", f"pretrained={folder},dtype=float32,max_length=1024", args.limit, manager, args.batch_size),
        "fp_reference_hf": _run("hf", f"pretrained={folder},dtype=float32,max_length=1024", args.limit, manager, args.batch_size),
    }
    record = {"bundle": Path(args.bundle).name, "limit": args.limit, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "rows": rows}
    print(write_results(record, Path(args.out)))


def _within(a: dict, b: dict, rel: float) -> bool:
    return a.keys() == b.keys() and all(x.keys() == y.keys() and all(math.isclose(x[k], y[k], rel_tol=rel) for k in x) for x, y in zip(a.values(), b.values()))


def write_results(record: dict, out: Path) -> str:
    """Add the agreement checks to ``record`` (the runtime rows exactly; the two FP rows
    within 1e-5 relative: the same scores summed in another float order), write
    OUT/eval_speed.json and OUT/eval_speed.md, and return the table."""
    rows = record["rows"]
    record["packed_equals_unpacked"] = rows["runtime_packed"]["metrics"] == rows["runtime_unpacked"]["metrics"]
    record["hf_scored_within_1e-5_of_hf"] = _within(rows["fp_reference"]["metrics"], rows["fp_reference_hf"]["metrics"], 1e-5)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_speed.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| row | items | seconds | items/s |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['items']} | {row['seconds']:.1f} | {row['items'] / row['seconds']:.2f} |")
    lines.append(f"\npacked metrics identical to unpacked: {record['packed_equals_unpacked']}")
    lines.append(f"FP reference (hf-scored) metrics within 1e-5 relative of lm-eval's hf model: {record['hf_scored_within_1e-5_of_hf']}")
    (out / "eval_speed.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

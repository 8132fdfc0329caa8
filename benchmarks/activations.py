"""Ablation of the A8 arithmetic: what each measure does to a bundle with INT8 activations,
side by side in one run, on three texts: the validation windows calibration decides on,
`quantkit_wikitext` (word perplexity of the held-out running-text items lm-eval scores) and
the held-out enwiki test split.

    python benchmarks/activations.py [--calib DIR] [--out benchmarks/results]

Every row is a bundle: the calibration in --calib (default: made here with the default
preset, ``quantkit calibrate``) with that row's precision and shadow plan, exported at
--chunk-size and run through the runtime (ONNX Runtime CPU executor). Rows:

- ``fp``: the float model.
- ``every graph A16``: W8A16, the sink rows on.
- ``every graph A8, no sink rows``: INT8 inputs and outputs on every graph, the first position
  on the NPU like every other (its output ranges recorded again with it).
- ``every graph A8 + FP sink rows``: the same with the first position in FP on the CPU
  (``--sink-tokens 1``, the default).
- ``calibrated plan``: the precision the calibration chose (precision.json).
- ``every graph A8 in, A16 out (ORT CPU only)``: int8 inputs and MACs with int16 outputs.
  ONNX Runtime's QNN provider refuses this QDQ form with per-channel weights (its HTP
  graph needs one activation type in and out), so it does not ship; measured to show
  where the A8 error lies.

Writes OUT/activations.json and OUT/activations.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from quantkit.eval.perplexity import perplexity
from quantkit.eval.tasks import build_task_data
from quantkit.runtime.engine import BundleModel

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.data.corpus import load_documents, token_sequences
from quantkit.export import export_bundle
from quantkit.models.loading import load_model
from quantkit.outlier_shadow import ShadowPlan
from quantkit.outlier_shadow.plan import PLAN_FILE
from quantkit.precision import PRECISION_FILE, PrecisionPlan
from quantkit.precision.output_ranges import calibrated_precision
from quantkit.sensitivity.placement import PLACEMENT_FILE
from quantkit.weights import WEIGHTS_FILE, load_weights


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calib", default=None, help="a calibration folder made with the default preset (default: calibrate into OUT/calib-activations)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--test-sequences", type=int, default=8)
    parser.add_argument("--test-seq-len", type=int, default=512)
    return parser.parse_args(argv)


def _word_perplexity(model: BundleModel | None, fp_model, tokenizer, documents: list[str]) -> float:
    """Word perplexity as lm-eval's rolling log-likelihood scores a document shorter than the
    context: BOS then its tokens, NLL summed over the tokens, over whitespace-separated words."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total, words = 0.0, 0
    for text in documents:
        ids = torch.tensor([bos, *tokenizer(text, add_special_tokens=False)["input_ids"]])
        logits = model.prefill(ids) if model is not None else fp_model(input_ids=ids[None], use_cache=False).logits[0]
        total += float(torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum"))
        words += len(re.split(r"\s+", text))  # lm-eval's wikitext word count
    return math.exp(total / words)


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    calib = Path(args.calib) if args.calib else out / "calib-activations"
    if not args.calib:
        calibrate(calib, CalibrationConfig.preset(model=args.model), overwrite=True)
    config = CalibrationConfig.load(calib / "config.json")
    loaded = load_model(config.model)
    tokenizer = loaded.tokenizer
    windows = token_sequences(tokenizer, load_documents(config.data, "validation"), config.evaluation.eval_num_sequences, config.evaluation.eval_seq_len)
    test_ids = token_sequences(tokenizer, load_documents(config.data, "test"), args.test_sequences, args.test_seq_len, source="test split")
    wikitext = [json.loads(line)["text"] for line in (build_task_data() / "quantkit_wikitext.jsonl").read_text().splitlines() if line.strip()]
    plan = ShadowPlan.load(calib / PLAN_FILE)
    precision = PrecisionPlan.load(calib / PRECISION_FILE)

    no_sink = ShadowPlan.from_dict(plan.to_dict())
    no_sink.config = type(plan.config).from_dict({**plan.config.to_dict(), "sink_tokens": 0})
    calibration_ids = token_sequences(tokenizer, load_documents(config.data, "calibration"), 4, config.statistics.seq_len)
    no_sink_precision = calibrated_precision(
        loaded.layout, no_sink, calibration_ids, "8", weights=load_weights(calib / WEIGHTS_FILE)
    )  # its ranges see the first position
    variants = {
        "every graph A16": (plan, precision.with_uniform_bits(16), True),
        "every graph A8, no sink rows": (no_sink, no_sink_precision, True),
        "every graph A8 + FP sink rows (--sink-tokens 1)": (plan, precision.with_uniform_bits(8), True),
        "calibrated plan (precision.json)": (plan, precision, True),
        "every graph A8 in, A16 out (ORT CPU only)": (plan, precision.with_uniform_bits(8, 16), False),
    }
    rows = [
        {
            "technique": "fp",
            "validation": perplexity(lambda ids: loaded.model(input_ids=ids, use_cache=False).logits, windows, desc="fp validation"),
            "wikitext": _word_perplexity(None, loaded.model, tokenizer, wikitext),
            "test": perplexity(lambda ids: loaded.model(input_ids=ids, use_cache=False).logits, test_ids, desc="fp test"),
            "a8_mac_share": None,
            "ships_on_htp": None,
        }
    ]
    for technique, (variant_plan, variant_precision, ships) in variants.items():
        with tempfile.TemporaryDirectory(prefix=".ablation-", dir=calib.parent) as scratch:
            variant = Path(scratch) / "calib"
            variant.mkdir()
            for name in ("config.json", PLACEMENT_FILE, WEIGHTS_FILE):
                shutil.copy(calib / name, variant / name)
            variant_plan.save(variant / PLAN_FILE)
            variant_precision.save(variant / PRECISION_FILE)
            bundle = export_bundle(variant, Path(scratch) / "bundle", chunk_size=args.chunk_size)
            runtime = BundleModel(bundle)
            forward = lambda ids: runtime.prefill(ids[0])[None]  # noqa: E731
            rows.append(
                {
                    "technique": technique,
                    "validation": perplexity(forward, windows, desc=f"{technique}: validation"),
                    "wikitext": _word_perplexity(runtime, None, tokenizer, wikitext),
                    "test": perplexity(forward, test_ids, desc=f"{technique}: test"),
                    "a8_mac_share": variant_precision.a8_mac_share(),
                    "ships_on_htp": ships,
                }
            )
        print(rows[-1], flush=True)
    fp = rows[0]
    for row in rows:
        for text in ("validation", "wikitext", "test"):
            row[f"{text}_delta_percent"] = 100 * (row[text] / fp[text] - 1)
    result = {
        "model": config.model,
        "calibration": Path(calib).name,  # the folder, not where it lay
        "chunk_size": args.chunk_size,
        "validation_tokens": list(windows.shape),
        "test_tokens": list(test_ids.shape),
        "wikitext_documents": len(wikitext),
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    (out / "activations.json").write_text(json.dumps(result, indent=2))
    table = _markdown(result)
    (out / "activations.md").write_text(table)
    print(table)
    return 0


def _markdown(result: dict) -> str:
    lines = [
        f"# A8 arithmetic ablation — {result['model']}, bundles at chunk {result['chunk_size']} through the runtime",
        "",
        f"| technique | validation ({result['validation_tokens'][0]}×{result['validation_tokens'][1]}) | quantkit_wikitext word PPL ({result['wikitext_documents']} docs) | test split ({result['test_tokens'][0]}×{result['test_tokens'][1]}) | NPU MACs at A8 | runs on QNN HTP |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        cells = [f"{row[t]:.3f}" + ("" if row["technique"] == "fp" else f" ({row[t + '_delta_percent']:+.2f}%)") for t in ("validation", "wikitext", "test")]
        share = "n/a" if row["a8_mac_share"] is None else f"{100 * row['a8_mac_share']:.1f}%"
        ships = (
            ""
            if row["ships_on_htp"] is None
            else "yes"
            if row["ships_on_htp"]
            else "no: the QNN provider refuses int8-in/int16-out MatMuls with per-channel weights"
        )
        lines.append(f"| {row['technique']} | {' | '.join(cells)} | {share} | {ships} |")
    lines += [
        "",
        "Every row is a bundle exported from one calibration and run through the runtime (ONNX Runtime CPU executor); each figure is one "
        "rounding realization. quantkit_wikitext: BOS then each held-out document, word perplexity as lm-eval's rolling log-likelihood scores it. "
        f"Measured in one run of benchmarks/activations.py in {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

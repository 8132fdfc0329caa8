"""``quantkit`` command line: each subcommand calls one public function with the same
arguments (settings live in JSON next to the artefacts, never in file names)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Callable

from quantkit import __version__
from quantkit.errors import QuantkitError

__all__ = ["main", "build_parser"]


def _number(kind: type, expected: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) of the flag's text, refused unless ``ok``.
    argparse names the flag in the message: "argument --limit: got -3, expected ..."."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback message names the type
    return parse


_positive_int = _number(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _number(int, "an integer ≥ 0", lambda v: v >= 0)
_non_negative_float = _number(float, "a number ≥ 0", lambda v: v >= 0)
_positive_float = _number(float, "a positive number (a count of items, or a fraction of them when below 1)", lambda v: v > 0)
_probability_mass = _number(float, "a number in (0, 1]", lambda v: 0 < v <= 1)


def _setting_type(item: dataclasses.Field, kind: type) -> Callable[[str], object]:
    """An argparse type for a calibration setting: its text as ``kind``, checked by the
    setting's own check (``calibration.config.setting_field``), so a bad value is refused
    where it is parsed, naming the flag."""
    from quantkit.calibration.config import check_setting

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {'an integer' if kind is int else 'a number'}") from None
        expected = check_setting(item, value) or (None if kind is not float or math.isfinite(value) else "a finite number")
        if expected:
            raise argparse.ArgumentTypeError(f"got {value!r}, expected {expected}")
        return value

    parse.__name__ = kind.__name__
    return parse


_METAVARS = {int: "N", float: "X", str: "VALUE"}


def _add_calibrate(subparsers) -> None:
    import typing

    from quantkit.calibration.config import SECTIONS, CalibrationConfig
    from quantkit.calibration.presets import DEFAULT_PRESET, PRESETS

    parser = subparsers.add_parser(
        "calibrate",
        help="collect activation statistics, AIMET W8A8 baseline encodings and the outlier report",
        description="Calibrate a model: per-Linear activation statistics, AIMET W8A8 per-tensor encodings "
        "(encodings JSON 1.0.0), FP vs W8A8 validation perplexity and an outlier heat-map, written to --out. "
        "Settings come from the --precision preset, then the --recipe file, then the flags given; "
        "the run writes them all to --out/config.json, which is itself a recipe.",
    )
    parser.add_argument(
        "--recipe",
        metavar="FILE",
        default=None,
        help="a YAML or JSON file of settings in config.json's structure (top-level model, data, rotation, device, precision; sections statistics, outliers, search, weights, evaluation, aimet), any part of it; flags given beside it override its settings",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRESETS),
        default=None,
        help=f"precision preset the settings start from: w8a8-mixed (INT8 weights, A8 inputs wherever they stay within --accuracy-budget), w8a16, w4a16 (4-bit LPBQ weights with int4 block offsets within 55%% of the INT8 bytes); the recipe and the flags override single settings (default: the recipe's, else {DEFAULT_PRESET})",
    )
    parser.add_argument("--out", default="calib", help="folder the calibration is written to (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--restart", action="store_true", help="discard a partial run of --out instead of resuming it")
    preset_sets = {key for settings in PRESETS.values() for key in settings}
    for section, cls in {"": CalibrationConfig, **SECTIONS}.items():
        summary = " ".join((cls.__doc__ or "").split("\n\n")[0].split())  # the docstring's first paragraph
        group = parser.add_argument_group(
            f"{section} settings" if section else "model and data",
            f"Section `{section}` of config.json and recipes: {summary}" if section else "Top-level keys of config.json and recipes.",
        )
        kinds = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.name in {"precision", "version"} or item.name in SECTIONS:
                continue
            default = (
                f"from --precision; {DEFAULT_PRESET}: {PRESETS[DEFAULT_PRESET].get(item.name, item.default)}" if item.name in preset_sets else item.default
            )
            # None: not given, the recipe's or the preset's value applies
            group.add_argument(
                f"--{item.name.replace('_', '-')}",
                type=_setting_type(item, kinds[item.name]),
                default=None,
                metavar=_METAVARS[kinds[item.name]],
                help=f"{item.metadata['help']} (default: {default})".replace("%", "%%"),
            )
    parser.set_defaults(handler=_run_calibrate)


def _calibration_config(args):
    """The preset (--precision, else the recipe's), then the recipe's settings, then the flags given."""
    from quantkit.calibration.config import SETTING_NAMES, CalibrationConfig, load_recipe
    from quantkit.calibration.presets import DEFAULT_PRESET

    recipe = load_recipe(args.recipe) if args.recipe else {}
    precision = args.precision or recipe.get("precision", DEFAULT_PRESET)
    settings = {**recipe, **{name: getattr(args, name) for name in SETTING_NAMES if name != "precision" and getattr(args, name) is not None}}
    settings.pop("precision", None)
    return CalibrationConfig.preset(precision, **settings)


def _run_calibrate(args) -> int:
    from quantkit.calibration import calibrate

    result = calibrate(args.out, _calibration_config(args), overwrite=args.overwrite, restart=args.restart)
    print(result.summary)
    print(f"\nwrote {result.out}/")
    return 0


def _add_cpu_kernels(parser) -> None:
    """--cpu-kernels of the commands that run a bundle (eval, run)."""
    from quantkit.runtime.sessions import CPU_KERNELS

    parser.add_argument(
        "--cpu-kernels",
        choices=CPU_KERNELS,
        default="integer",
        help="with --npu cpu: 'integer' runs the A8 graphs on int8 GEMMs as the NPU sums them, 'qdq' every graph as written (float MatMul; lint's reference) (default: %(default)s)",
    )


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="lm-eval accuracy of a bundle (run by the runtime) or of the FP model",
        description="Evaluate MODEL with lm-eval: a bundle folder runs through the quantkit runtime (INT8 graphs on --npu, "
        "shadow path on the CPU); a model name, Hugging Face folder or .gguf runs in float32 through lm-eval's hf model (the FP reference). "
        "Offline tasks, built from held-out enwiki text: quantkit_wikitext, quantkit_lastword, quantkit_choice (group quantkit_offline).",
    )
    parser.add_argument("model", help="bundle folder (from `quantkit export`), or a model: built-in name, Hugging Face folder, .gguf file")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. quantkit_offline or quantkit_lastword,quantkit_choice")
    parser.add_argument(
        "--limit",
        type=_positive_float,
        default=None,
        help="evaluate at most N items per task, or that fraction of each task when below 1 (default: every item)",
    )
    parser.add_argument(
        "--npu", choices=("cpu", "qnn"), default="cpu", help="bundle NPU graph executor: ONNX Runtime CPU provider or QNN HTP (default: %(default)s)"
    )
    _add_cpu_kernels(parser)
    parser.add_argument("--no-shadow", action="store_true", help="bundle: clip outliers instead of running the shadow path (for comparison)")
    parser.add_argument(
        "--max-length",
        type=_positive_int,
        default=None,
        help="longest input, in tokens, the model is given (default: the bundle's context length / the model's)",
    )
    parser.add_argument("--output", default=None, help="also write lm-eval's results as JSON to this file")
    parser.add_argument(
        "--include-path", action="append", default=[], metavar="DIR", help="a folder of your own lm-eval task YAML files (lm-eval's --include_path; repeatable)"
    )
    parser.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from quantkit.eval import evaluate, results_table

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = evaluate(
        args.model,
        args.tasks,
        limit=limit,
        npu=args.npu,
        kernels=args.cpu_kernels,
        shadow=not args.no_shadow,
        max_length=args.max_length,
        output=args.output,
        include_paths=args.include_path,
    )
    if results is None:  # a process other than rank 0 under `accelerate launch`: rank 0 reports
        return 0
    print(results_table(results))
    if args.output:
        print(f"\nwrote {args.output}")
    return 0


LM_EVAL_COMMAND = "lm-eval"


def _add_lm_eval(subparsers) -> None:
    # Listed for --help only: main() hands everything after `lm-eval` to lm-eval untouched.
    subparsers.add_parser(
        LM_EVAL_COMMAND,
        help="lm-eval's own command line with the `quantkit` and `hf-scored` models registered (e.g. --model quantkit --model_args bundle=B)",
        description="Exactly lm-eval's command-line arguments (`lm-eval --help`), run with quantkit's lm-eval models registered "
        "(`quantkit`: a bundle through the runtime; `hf-scored`: lm-eval's hf model with the LM head only at scored positions, shared contexts once): "
        "`quantkit lm-eval --model quantkit --model_args bundle=BUNDLE,npu=cpu --tasks TASKS --include_path DIR`.",
    )


def run_lm_eval(arguments: list[str]) -> int:
    """``lm-eval ARGUMENTS`` with the ``quantkit`` and ``hf-scored`` models registered (lm-eval 0.4 has no
    plugin entry point, so its CLI cannot load it by itself)."""
    from lm_eval.__main__ import cli_evaluate

    import quantkit.eval.hf_reference  # noqa: F401  registers the "hf-scored" lm-eval model
    import quantkit.eval.lm  # noqa: F401  registers the "quantkit" lm-eval model

    saved = sys.argv
    sys.argv = [LM_EVAL_COMMAND, *arguments]
    try:
        cli_evaluate()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _add_prepare(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert a model to the cache, build the enwiki corpus and the offline eval tasks (done once, offline)",
        description="Prepare offline assets: convert --model (GGUF or built-in) into the quantkit cache, build the enwiki splits and the offline lm-eval tasks.",
    )
    parser.add_argument("--model", default="smollm2-135m", help="model to convert into the cache: a built-in name or a .gguf file (default: %(default)s)")
    parser.set_defaults(handler=_run_prepare)


def _run_prepare(args) -> int:
    from quantkit.data.enwiki import enwiki_split_files
    from quantkit.eval.tasks import build_task_data
    from quantkit.models.loading import prepare_model_folder

    folder, sha = prepare_model_folder(args.model)
    print(f"model {args.model}: {folder} (source sha256 {sha[:16]})")
    for split, path in enwiki_split_files().items():
        print(f"enwiki {split}: {path}")
    print(f"offline eval tasks: {build_task_data()}")
    return 0


def _add_export(subparsers) -> None:
    from quantkit.runtime.bundle import DEFAULT_CHUNK_SIZE

    parser = subparsers.add_parser(
        "export",
        help="write the deployment bundle: INT8 QDQ ONNX graphs for QNN, encodings, shadow weights",
        description="Export the calibration in CALIB as a deployment bundle (see docs/bundle-format.md): one INT8 QDQ ONNX graph "
        "per NPU subgraph, AIMET encodings 1.0.0 matching them, shadow and CPU weights, manifest with sha256.",
    )
    parser.add_argument("calib", help="folder written by `quantkit calibrate`")
    parser.add_argument("--out", default="bundle", help="folder the bundle is written to (default: %(default)s)")
    parser.add_argument(
        "--chunk-size", type=_positive_int, default=DEFAULT_CHUNK_SIZE, help="tokens per prefill chunk: the graphs' static shape (default: %(default)s)"
    )
    parser.add_argument(
        "--activation-bits",
        type=int,
        choices=(8, 16),
        default=None,
        help="NPU graph activations: by default each graph's calibrated width (calibrate --activation-bits auto|8|16); 8 or 16 put every graph at that width with the output ranges calibration recorded for it",
    )
    parser.add_argument("--qnn-context", action="store_true", help="also compile each graph for a Snapdragon target and write its EPContext model")
    parser.add_argument("--soc-model", type=_positive_int, default=None, help="QNN SoC model id for --qnn-context (e.g. 60: Snapdragon 8 Gen 3)")
    parser.add_argument("--htp-arch", type=_positive_int, default=None, help="HTP architecture for --qnn-context (e.g. 75)")
    parser.add_argument(
        "--output-bits",
        type=int,
        choices=(8, 16),
        default=None,
        help="with --activation-bits: the graphs' output width (default: as wide as the input); 16 with --activation-bits 8 keeps int8 MACs and writes int16 outputs — ONNX Runtime's CPU provider runs it, onnxruntime-qnn's HTP refuses it (lint --qnn says so)",
    )
    parser.add_argument(
        "--naive-w8a8",
        action="store_true",
        help="write the plain-PTQ baseline instead (with --activation-bits 8): every block on the NPU, min/max INT8 ranges, no shadow path — for regression suites",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device the model runs on while the graphs' output ranges are recorded: cpu or cuda (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    from quantkit.export import export_bundle

    out = export_bundle(
        args.calib,
        args.out,
        chunk_size=args.chunk_size,
        activation_bits=args.activation_bits,
        output_bits=args.output_bits,
        qnn_context=args.qnn_context,
        soc_model=args.soc_model,
        htp_arch=args.htp_arch,
        device=args.device,
        overwrite=args.overwrite,
        naive_w8a8=args.naive_w8a8,
    )
    print(f"wrote {out}/ — check it with: quantkit lint {out} --qnn")
    return 0


def _add_lint(subparsers) -> None:
    parser = subparsers.add_parser(
        "lint",
        help="check a bundle: encodings vs QDQ tensors, bit-widths, INT32 bias, static shapes, ops, hashes",
        description="Check a deployment bundle; exit status 1 and a list of problems when anything is off. "
        "--qnn also compiles and runs every NPU graph on the QNN HTP backend (CPU fallback disabled) and compares it, and ONNX Runtime CPU, with the graph's float result.",
    )
    parser.add_argument("bundle", help="folder written by `quantkit export`")
    parser.add_argument(
        "--qnn",
        action="store_true",
        help="run every graph on QNN HTP and on ONNX Runtime CPU and compare both with the graph's float result (and its EPContext model, where the bundle has one)",
    )
    parser.set_defaults(handler=_run_lint)


def _run_lint(args) -> int:
    from quantkit.export.lint import MIN_SQNR_DB, SQNR_MARGIN_DB, lint_bundle

    report = lint_bundle(args.bundle, qnn=args.qnn)
    for name, value in report.sqnr_db.items():
        context = f", its context binary {report.context_sqnr_db[name]:6.1f} dB" if name in report.context_sqnr_db else ""
        integer = f", integer kernels {report.integer_sqnr_db[name]:6.1f} dB" if name in report.integer_sqnr_db else ""
        print(f"{name:<20} SQNR vs float: QNN HTP {value:6.1f} dB, ONNX Runtime CPU {report.cpu_sqnr_db[name]:6.1f} dB{integer}{context}")
    if report.sqnr_db:
        values = list(report.sqnr_db.values())
        floors = ", ".join(f"A{bits} {floor:g} dB" for bits, floor in MIN_SQNR_DB.items())
        print(
            f"{len(values)} graphs on QNN HTP, no CPU fallback; HTP SQNR vs float min {min(values):.1f} dB, median {sorted(values)[len(values) // 2]:.1f} dB "
            f"(a graph fails more than {SQNR_MARGIN_DB:g} dB below CPU's or under the floor: {floors})"
        )
    if report.ok:
        print(f"{args.bundle}: OK")
        return 0
    print(f"{args.bundle}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        print(f"  - {problem}")
    return 1


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report/index.html: outlier heat-map, sensitivity, placement, accuracy and prefill charts",
        description="Render the one-page HTML report (PNG plots beside index.html) of a calibration folder or a bundle, "
        "with the accuracy and prefill benchmark results; a results file that does not exist yet becomes a section naming the command that produces it.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--calib", default=None, help="folder written by `quantkit calibrate`")
    source.add_argument("--bundle", default=None, help="folder written by `quantkit export`")
    parser.add_argument(
        "--accuracy",
        default="benchmarks/results/accuracy.json",
        help="the results JSON of benchmarks/accuracy.py for the accuracy section (default: %(default)s)",
    )
    parser.add_argument(
        "--prefill", default="benchmarks/results/prefill.json", help="the results JSON of benchmarks/prefill.py for the prefill section (default: %(default)s)"
    )
    parser.add_argument("--regress", default=None, help="results.json written by `quantkit regress` (e.g. regress/results.json)")
    parser.add_argument("--profile", default=None, help="profile.json written by `quantkit profile` (e.g. profile/profile.json)")
    parser.add_argument("--out", default="report", help="folder the report is written to, replaced whole (default: %(default)s)")
    parser.set_defaults(handler=_run_report)


def _run_report(args) -> int:
    from quantkit.report import write_report

    index = write_report(
        args.out, calib=args.calib, bundle=args.bundle, accuracy=args.accuracy, prefill=args.prefill, regress=args.regress, profile=args.profile
    )
    print(f"wrote {index}")
    return 0


def _add_profile(subparsers) -> None:
    from quantkit.export.profile import DEFAULT_HTP_CLOCK_GHZ

    parser = subparsers.add_parser(
        "profile",
        help="HTP cycles of every NPU graph (QNN HTP profiler), this bundle against every graph at A16, and projected prefill tokens/s",
        description="Compile and run every NPU graph of BUNDLE on the QNN HTP backend with its profiler on, once as exported and once with "
        "16-bit activations; print the cycles per chunk and the projected NPU prefill tokens/s at an assumed HTP clock; write "
        "OUT/profile.json and OUT/profile.png. On a workstation the HTP is emulated: its cycles are a relative cost, not a device timing.",
    )
    parser.add_argument("bundle", help="folder written by `quantkit export`")
    parser.add_argument("--out", default="profile", help="folder profile.json and profile.png are written to (default: %(default)s)")
    parser.add_argument(
        "--soc-model", type=_positive_int, default=60, help="QNN SoC model id the graphs are compiled for (default: %(default)s, Snapdragon 8 Gen 3)"
    )
    parser.add_argument(
        "--htp-arch", type=_positive_int, default=None, help="HTP architecture version to compile for, e.g. 75 (default: the one of --soc-model)"
    )
    parser.add_argument(
        "--htp-clock-ghz",
        type=float,
        default=DEFAULT_HTP_CLOCK_GHZ,
        help="HTP clock the tokens/s projection assumes (default: %(default)s; Qualcomm does not publish it, times scale as 1 / clock)",
    )
    parser.add_argument("--repeats", type=_positive_int, default=3, help="runs per graph, the least cycle count kept (default: %(default)s)")
    parser.set_defaults(handler=_run_profile)


def _run_profile(args) -> int:
    from pathlib import Path

    from quantkit.export.profile import profile_bundle, write_profile
    from quantkit.report.plots import plot_htp_cycles

    profile = profile_bundle(args.bundle, args.soc_model, args.htp_arch, args.htp_clock_ghz, args.repeats)
    out = Path(args.out)
    path = write_profile(profile, out)
    plot_htp_cycles(profile.to_dict()["graphs"], out / "profile.png")
    print(profile.summary())
    print(f"wrote {path} and {out / 'profile.png'}")
    return 0


def _add_run(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="generate text with a bundle: chunked prefill (NPU graphs + CPU shadow path), then decode",
        description="Execute a deployment bundle the way the phone would: chunked prefill with the NPU graphs "
        "(ONNX Runtime CPU provider, or QNN HTP with --npu qnn) and the CPU work overlapped, then greedy or sampled decode. "
        "Streams the text and prints prefill and decode tokens/s.",
    )
    parser.add_argument("bundle", help="folder written by `quantkit export`")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text the model continues")
    prompt.add_argument("--prompt-file", help="a UTF-8 file holding the text the model continues")
    parser.add_argument("--max-new-tokens", type=_non_negative_int, default=64, help="tokens to generate after the prompt (default: %(default)s)")
    parser.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sampling temperature: higher is more random; 0 always takes the most likely token (greedy) (default: %(default)s)",
    )
    parser.add_argument("--top-k", type=_non_negative_int, default=0, help="sample among the k most likely tokens; 0 = all (default: %(default)s)")
    parser.add_argument(
        "--top-p",
        type=_probability_mass,
        default=1.0,
        help="sample among the most likely tokens whose probabilities add up to this mass (nucleus sampling); 1 = all (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=None,
        help="random seed of the sampling, for output that repeats (default: unseeded, so sampled output differs between runs)",
    )
    parser.add_argument("--npu", choices=("cpu", "qnn"), default="cpu", help="NPU graph executor: ONNX Runtime CPU provider or QNN HTP (default: %(default)s)")
    parser.add_argument(
        "--schedule", choices=("ooo", "inorder"), default="ooo", help="out-of-order (§3.4) or in-order subgraph execution (default: %(default)s)"
    )
    _add_cpu_kernels(parser)
    parser.add_argument("--no-shadow", action="store_true", help="clip outliers instead of running the shadow path (for comparison)")
    parser.add_argument("--trace", default=None, help="write the prefill schedule as a Chrome trace JSON (chrome://tracing, Perfetto)")
    parser.set_defaults(handler=_run_run)


def _run_run(args) -> int:
    from pathlib import Path

    from quantkit.runtime.generate import generate_text

    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise QuantkitError(f"--prompt-file {path}: no such file")
        prompt = path.read_text(encoding="utf-8")
    else:
        prompt = args.prompt
    report = generate_text(
        args.bundle,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        npu=args.npu,
        kernels=args.cpu_kernels,
        schedule=args.schedule,
        shadow=not args.no_shadow,
        trace=args.trace,
        stream=sys.stdout,
    )
    print(report.summary(), file=sys.stderr)
    if args.trace:
        print(f"trace: {args.trace}", file=sys.stderr)
    return 0


def _add_regress(subparsers) -> None:
    parser = subparsers.add_parser(
        "regress",
        help="accuracy regression suite: lm-eval on bundles vs the FP reference and stored baselines; JSON + JUnit XML",
        description="Run an accuracy regression suite (e.g. eval/suites/smollm2.yaml): every task on the FP reference and on each "
        "candidate bundle, thresholds against FP and stored baselines. Writes OUT/results.json and OUT/junit.xml; exit status 1 "
        "and a table of what regressed when any check fails.",
    )
    parser.add_argument("suite", help="suite YAML file: the tasks, the candidates and their thresholds (e.g. eval/suites/smollm2.yaml)")
    parser.add_argument("--out", default="regress", help="folder results.json and junit.xml are written to (default: %(default)s)")
    parser.add_argument("--candidates", default=None, help="comma-separated names of the suite's candidates to run (default: all in the suite)")
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH", help="override a candidate's bundle path (repeatable)")
    parser.add_argument("--update-baselines", action="store_true", help="store the measured values as the suite's baselines")
    parser.add_argument("--fresh-reference", action="store_true", help="evaluate the FP reference again instead of using its cached results")
    parser.set_defaults(handler=_run_regress)


def _run_regress(args) -> int:
    from quantkit.errors import EvaluationError
    from quantkit.eval.regress import load_suite, run_suite

    bundles = {}
    for item in args.bundle:
        name, separator, path = item.partition("=")
        if not separator or not name or not path:
            raise EvaluationError(f"--bundle {item!r}: expected NAME=PATH, e.g. --bundle quantkit=bundle/")
        bundles[name] = path
    only = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    report = run_suite(
        load_suite(args.suite), args.out, only=only, bundles=bundles, update_baselines=args.update_baselines, fresh_reference=args.fresh_reference
    )
    print(report.table())
    print(report.timings())
    print(f"\nwrote {args.out}/results.json and {args.out}/junit.xml")
    if report.passed:
        print(f"suite {report.suite}: PASSED ({len(report.checks)} checks)")
        return 0
    print(f"suite {report.suite}: {len(report.failures)} of {len(report.checks)} checks REGRESSED:")
    for c in report.failures:
        print(f"  - {c.candidate} {c.task} {c.metric} = {c.value:.4f}, limit {c.check} = {c.limit:.4f}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantkit", description="Calibrate small LLMs for INT8 execution on mobile NPUs (llm.npu, arXiv 2407.05858).")
    parser.add_argument("--version", action="version", version=f"quantkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details of every step")
    subparsers = parser.add_subparsers(title="subcommands", metavar="COMMAND", required=True)
    _add_calibrate(subparsers)
    _add_eval(subparsers)
    _add_export(subparsers)
    _add_lint(subparsers)
    _add_prepare(subparsers)
    _add_profile(subparsers)
    _add_report(subparsers)
    _add_run(subparsers)
    _add_regress(subparsers)
    _add_lm_eval(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [LM_EVAL_COMMAND]:
        return run_lm_eval(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (QuantkitError, ValueError) as error:
        print(f"quantkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantkit: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

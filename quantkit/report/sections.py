"""The sections of the report page, one builder each.

A builder takes the ``ReportInputs`` and the folder being written (where it saves its
PNGs) and returns a ``Section``, or ``None`` to leave the section out because its input
was not asked for. An input that was asked for but is missing gives a section that names
the command producing it. ``SECTIONS`` is the page, in order; to add one (say, lm-eval
task accuracy), add its input to ``ReportInputs`` / ``load_report_inputs``, write a
builder here and append it to ``SECTIONS``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from quantkit.report.html import Section, escape, facts, figure, hint, note, table
from quantkit.report.inputs import HEATMAP_PNG, SENSITIVITY_PNG, ReportInputs
from quantkit.report.plots import plot_delta_ppl, plot_htp_cycles, plot_precision_map, plot_precision_pareto, plot_prefill_speed, plot_sensitivity, plot_stages

__all__ = [
    "SectionBuilder",
    "SECTIONS",
    "summary_section",
    "accuracy_section",
    "prefill_section",
    "outlier_section",
    "sensitivity_section",
    "placement_section",
    "precision_section",
    "bundle_section",
    "ACCURACY_PNG",
    "PREFILL_PNG",
    "PARETO_PNG",
    "PRECISION_MAP_PNG",
]

SectionBuilder = Callable[[ReportInputs, Path], "Section | None"]
ACCURACY_PNG = "accuracy_delta_ppl.png"
PREFILL_PNG = "prefill_speed.png"
PROFILE_PNG = "htp_profile.png"
PARETO_PNG = "precision_pareto.png"
PRECISION_MAP_PNG = "precision_map.png"
STAGES_PNG = "calibration_stages.png"

_CALIBRATE_COMMANDS = "quantkit calibrate --out calib\nquantkit report --calib calib"
_PPL_LABELS = {"fp": "FP32", "quantkit": "quantkit", "aimet_w8a8_per_tensor": "AIMET W8A8, per-tensor (naive)"}
_ACCURACY_LABELS = {
    "fp": "FP32",
    "naive_w8a8": "naive W8A8 (AIMET, per-tensor)",
    "smoothquant_static": "SmoothQuant, static W8A8",
    "naive_w8a16": "naive W8A16 (AIMET, per-tensor)",
    "naive_w4a16": "naive W4A16 (AIMET, per-channel INT4, min/max)",
    "llm_int8": "LLM.int8() (dynamic, CPU)",
    "quantkit": "quantkit",
    "quantkit_w8a16": "quantkit, every NPU graph A16",
    "quantkit_w8a8": "quantkit, every NPU graph A8",
    "quantkit_auto": "quantkit, per-graph A8/A16 (auto)",
    "quantkit_w4a16": "quantkit W4A16, INT4 per channel (GPTQ)",
    "quantkit_w4a16_block64": "quantkit W4A16, LPBQ blocks of 64 (GPTQ)",
    "quantkit_w4a16_block32": "quantkit W4A16, LPBQ blocks of 32 (GPTQ)",
    "quantkit_w4_auto_block32": "quantkit auto A8/A16, INT4 (LPBQ 32) on the A16 graphs",
}
_GRAPH_KINDS = ("qkv", "o", "gate_up", "down")  # the NPU graphs of a block, in the block's order
_PREFILL_LABELS = {
    "hf_fp32": "HF transformers FP32",
    "runtime_fp": "runtime FP32",
    "int8_inorder": "INT8, in order",
    "int8_shadow_inorder": "INT8 + shadow, in order",
    "int8_shadow_ooo": "INT8 + shadow, out of order",
}
_PREFILL_BASELINE = "hf_fp32"
_PREFILL_FULL_METHOD = "int8_shadow_ooo"


def _percent_over(value: float, reference: float | None) -> str:
    return f"{100 * (value / reference - 1):+.2f}%" if reference else "—"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _missing_calibration(inputs: ReportInputs, what: str) -> str:
    """The hint of a calibration-derived section whose data is absent."""
    if inputs.source is None:
        return hint(f"No calibration given, so no {what}. Calibrate, then point the report at the folder:", _CALIBRATE_COMMANDS)
    if inputs.source == "bundle":
        return hint(
            f"This bundle's report/ holds no {what} (it was exported before reports carried their data). Use its calibration folder, or export again:",
            "quantkit report --calib CALIB\nquantkit export CALIB --out BUNDLE --overwrite",
        )
    return hint(f"The calibration folder has no {what}: the run did not finish or predates it. Calibrate again:", "quantkit calibrate --out CALIB --overwrite")


def summary_section(inputs: ReportInputs, folder: Path) -> Section:
    """Validation perplexity of FP, quantkit and naive W8A8, placement, shadow memory, cost."""
    summary = inputs.summary
    if summary is None:
        return Section("summary", "Summary", _missing_calibration(inputs, "calibration summary (summary.json)"))
    perplexity = summary.get("perplexity", {})
    fp = perplexity.get("fp")
    ppl_table = table(
        ["method", "validation PPL", "vs FP"],
        [[_PPL_LABELS.get(method, method), f"{value:.3f}", _percent_over(value, fp) if method != "fp" else ""] for method, value in perplexity.items()],
        numeric_columns=(1, 2),
        highlight_rows=[i for i, method in enumerate(perplexity) if method == "quantkit"],
    )
    items = [("model", summary.get("model", "?"))]
    for key, label in (("calibration_tokens", "calibration tokens"), ("validation_tokens", "validation tokens")):
        if key in summary:
            items.append((label, " × ".join(map(str, summary[key])) + " (sequences × length)"))
    if "npu_blocks" in summary and "num_blocks" in summary:
        items.append(("blocks on the NPU", f"{summary['npu_blocks']} of {summary['num_blocks']}"))
    if summary.get("model_parameters") and "resident_shadow_parameters" in summary:
        share = summary["resident_shadow_parameters"] / summary["model_parameters"]
        items.append(("resident shadow weights", f"{_count(summary['resident_shadow_parameters'])} parameters ({100 * share:.2f}% of the model)"))
    seconds = summary.get("seconds", {})
    if seconds:
        items.append(
            (
                "calibration time",
                f"{seconds.get('total', sum(seconds.values())):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")",
            )
        )
    stage_peaks = summary.get("stage_peak_memory_mb", {})
    if "peak_memory_mb" in summary:
        highest = f" (stage {max(stage_peaks, key=stage_peaks.get)})" if stage_peaks else ""
        items.append(("peak memory", f"{summary['peak_memory_mb']:.0f} MB{highest}"))
    stages = ""
    if stage_peaks:
        plot_stages({k: v for k, v in seconds.items() if k != "total"}, stage_peaks, folder / STAGES_PNG)
        stages = figure(
            STAGES_PNG, "bar charts of each calibration stage's time and peak memory", "Each calibration stage: wall time and peak resident memory."
        )
    config = inputs.settings
    settings = [
        f"{key} = {config[key]}"
        for key in ("outlier_quantile", "scale_rule", "hot_coverage", "max_resident_fraction", "prune_fraction", "weight_scale_rule", "accuracy_budget")
        if key in config
    ]
    body = ppl_table + facts(items) + stages + (note("Settings: " + ", ".join(settings) + ".") if settings else "")
    return Section("summary", "Summary", body)


def _missing_results(key: str, title: str, results, what: str, how: str, commands: str) -> Section:
    """The section shown in place of results that are absent or unreadable: the problem
    (or "No WHAT at PATH.") and the commands that produce them."""
    text = results.problem or f"No {what} at {results.path}. {how}"
    return Section(key, title, hint(text, commands))


def _accuracy_label(row: dict) -> str:
    label = _ACCURACY_LABELS.get(row["method"], row["method"])
    return label + (f" (α={row['alpha']:g})" if isinstance(row.get("alpha"), (int, float)) else "")


def accuracy_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """Test perplexity of FP vs naive W8A8 vs SmoothQuant-static vs LLM.int8() vs quantkit."""
    results = inputs.accuracy
    if results is None:
        return None
    title = "Accuracy"
    if results.data is None:
        return _missing_results(
            "accuracy",
            title,
            results,
            "accuracy results",
            "The benchmark measures every method on the held-out test split:",
            f"python benchmarks/accuracy.py\nquantkit report --accuracy {results.path}",
        )
    data = results.data
    rows = data["rows"]
    fp = next((row["ppl"] for row in rows if row["method"] == "fp"), None)
    model_bytes, num_blocks = data.get("model_bytes"), data.get("num_blocks")

    def delta(row: dict) -> float | None:
        if isinstance(row.get("delta_ppl_percent"), (int, float)):
            return float(row["delta_ppl_percent"])
        return 100 * (row["ppl"] / fp - 1) if fp else None

    def npu_blocks(row: dict) -> str:
        if row.get("npu_blocks") is None:
            return "n/a (dynamic)"
        return f"{row['npu_blocks']}/{num_blocks}" if num_blocks else str(row["npu_blocks"])

    def shadow(row: dict) -> str:
        if row.get("shadow_bytes") is None:
            return "n/a"
        share = f" ({100 * row['shadow_bytes'] / model_bytes:.2f}%)" if model_bytes else ""
        return f"{row['shadow_bytes'] / 1e6:.2f} MB{share}"

    def a8_share(row: dict) -> str:
        share = row.get("a8_mac_share")
        return f"{100 * share:.0f}%" if isinstance(share, (int, float)) else "n/a"

    with_shares = any("a8_mac_share" in row for row in rows)  # results written before per-graph bits have none
    cells = [
        [
            _accuracy_label(row),
            f"{row['ppl']:.3f}",
            "" if delta(row) is None else f"{delta(row):+.2f}%",
            npu_blocks(row),
            *([a8_share(row)] if with_shares else []),
            shadow(row),
        ]
        for row in rows
    ]
    header = ["method", "test PPL", "ΔPPL vs FP", "blocks on NPU", *(["NPU MACs at A8"] if with_shares else []), "resident shadow weights"]
    highlighted = [i for i, row in enumerate(rows) if row["method"] == "quantkit" or row.get("calibrated")]
    body = table(header, cells, numeric_columns=range(1, len(header)), highlight_rows=highlighted)
    charted = [(row, delta(row)) for row in rows if row["method"] != "fp" and delta(row) is not None]
    if charted:
        highlight = _accuracy_label(rows[highlighted[0]]) if highlighted else None
        plot_delta_ppl([_accuracy_label(row) for row, _ in charted], [value for _, value in charted], highlight, folder / ACCURACY_PNG)
        body += figure(ACCURACY_PNG, "perplexity increase over FP per method", "Perplexity increase over FP per method (FP itself is the reference).")
    tokens = data.get("test_tokens")
    measured = f"{data.get('model', 'the model')}, held-out test split" + (
        f", {tokens[0]}×{tokens[1]} tokens" if isinstance(tokens, list) and len(tokens) == 2 else ""
    )
    body += note(f"Measured on {measured} by benchmarks/accuracy.py ({results.path.name}).")
    if with_shares:
        body += note(
            "NPU MACs at A8: share of the NPU-placed Linears' multiply-accumulates whose activations are INT8 (the rest A16); "
            "n/a where nothing runs as a static NPU graph. The quantkit rows are the deployed arithmetic of the bundle's NPU graphs."
        )
    if inputs.model and data.get("model") and data["model"] != inputs.model:
        body += hint(f"These results are for {data['model']}, not {inputs.model}, the model of the calibration above.")
    return Section("accuracy", title, body)


def prefill_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """Prefill tokens/s per configuration, with the speed-up over HF transformers FP32."""
    results = inputs.prefill
    if results is None:
        return None
    title = "Prefill speed"
    if results.data is None:
        return _missing_results(
            "prefill",
            title,
            results,
            "prefill results",
            "The benchmark times each configuration on one long prompt:",
            f"python benchmarks/prefill.py\nquantkit report --prefill {results.path}",
        )
    data = results.data
    rows = data["rows"]
    baseline = next((row["tokens_per_s"] for row in rows if row["config"] == _PREFILL_BASELINE), None)
    speedups = [row["tokens_per_s"] / baseline if baseline else None for row in rows]
    labels = [_PREFILL_LABELS.get(row["config"], row["config"]) for row in rows]
    prompt_tokens = data.get("prompt_tokens")
    plot_prefill_speed(
        labels, [row["tokens_per_s"] for row in rows], speedups, prompt_tokens, folder / PREFILL_PNG, highlight=_PREFILL_LABELS[_PREFILL_FULL_METHOD]
    )
    body = table(
        ["configuration", "config key", "tokens/s", f"speed-up vs {_PREFILL_LABELS[_PREFILL_BASELINE]}"],
        [
            [label, row["config"], f"{row['tokens_per_s']:,.1f}", f"×{speedup:.2f}" if speedup is not None else "—"]
            for label, row, speedup in zip(labels, rows, speedups)
        ],
        numeric_columns=(2, 3),
        highlight_rows=[i for i, row in enumerate(rows) if row["config"] == _PREFILL_FULL_METHOD],
    )
    body += figure(
        PREFILL_PNG,
        "prefill tokens per second per configuration",
        "Prefill speed per configuration; bars labelled with the speed-up over HF transformers FP32.",
    )
    if baseline is None:
        body += note(f"No {_PREFILL_BASELINE} row in {results.path.name}, so no speed-ups.")
    body += note("Measured by benchmarks/prefill.py" + (f" on a {prompt_tokens}-token prompt" if prompt_tokens else "") + f" ({results.path.name}).")
    return Section("prefill", title, body)


def outlier_section(inputs: ReportInputs, folder: Path) -> Section:
    """The outlier heat-map and the layers with the largest max|x| / scale."""
    title = "Activation outliers"
    if inputs.heatmap is None:
        return Section("outliers", title, _missing_calibration(inputs, "outlier heat-map"))
    shutil.copyfile(inputs.heatmap, folder / HEATMAP_PNG)
    body = figure(
        HEATMAP_PNG,
        "heat-map of per-channel activation maxima relative to the INT8 clip",
        "Per input channel of every decoder Linear: log10 of the channel's max|x| over the per-tensor INT8 clip point. "
        "Red channels exceed the INT8 range; the shadow path adds them back in FP on the CPU.",
    )
    top = (inputs.summary or {}).get("top_outlier_layers", [])
    if top:
        body += "<p>Layers with the largest importance max|x| / s (the paper's ranking, §3.3; s = clip / 127):</p>"
        body += table(
            ["layer", "max|x|", "clip", "max|x| / clip", "max|x| / s", "outlier channels"],
            [
                [
                    row["layer"].removeprefix("model.")
                    + (" (+" + ", ".join(name.rsplit(".", 1)[-1] for name in row.get("shared_with", [])) + ")" if row.get("shared_with") else ""),
                    f"{row['absmax']:.2f}",
                    f"{row['clip']:.3f}",
                    f"{row['absmax'] / row['clip']:.1f}" if row["clip"] else "—",
                    f"{row['absmax_over_scale']:,.0f}",
                    row["outlier_channels"],
                ]
                for row in top
            ],
            numeric_columns=(1, 2, 3, 4, 5),
        )
    return Section("outliers", title, body)


def sensitivity_section(inputs: ReportInputs, folder: Path) -> Section:
    """Per-block ΔNLL when only that block is quantized; the CPU-FP blocks marked."""
    title = "Block sensitivity"
    caption = "ΔNLL of the validation text when only that block runs quantized (blue: NPU, red: kept on the CPU in FP)."
    if inputs.sensitivity is not None and inputs.placement is not None:
        from quantkit.sensitivity import BlockSensitivity, PlacementPlan

        sensitivities = [BlockSensitivity(**row) for row in inputs.sensitivity]
        names = {field.name for field in dataclasses.fields(PlacementPlan)}
        plot_sensitivity(sensitivities, PlacementPlan(**{k: v for k, v in inputs.placement.items() if k in names}), folder / SENSITIVITY_PNG)
        ranked = sorted(sensitivities, key=lambda s: s.delta_nll, reverse=True)[:3]
        most = ", ".join(f"block {s.block} ({1000 * s.delta_nll:+.2f} milli-nats)" for s in ranked)
        return Section("sensitivity", title, figure(SENSITIVITY_PNG, "bar chart of per-block sensitivity", caption) + note(f"Most sensitive: {most}."))
    if inputs.sensitivity_plot is not None:
        shutil.copyfile(inputs.sensitivity_plot, folder / SENSITIVITY_PNG)
        return Section("sensitivity", title, figure(SENSITIVITY_PNG, "bar chart of per-block sensitivity", caption))
    return Section("sensitivity", title, _missing_calibration(inputs, "per-block sensitivity (sensitivity.json)"))


def placement_section(inputs: ReportInputs, folder: Path) -> Section:
    """Which blocks run on the NPU and which stay on the CPU in FP, and the placements tried."""
    title = "Block placement"
    plan = inputs.placement or {}
    placement = plan.get("placement") or (inputs.manifest or {}).get("placement")
    if not placement:
        return Section("placement", title, _missing_calibration(inputs, "block placement (placement.json)"))
    cells = "".join(f'<span class="{"npu" if where == "npu" else "cpu"}" title="block {i}: {escape(where)}">{i}</span>' for i, where in enumerate(placement))
    legend = '<p class="legend">Blocks:<span style="background:#1f77b4"></span>NPU (INT8)<span style="background:#d62728"></span>CPU (FP32)</p>'
    cpu_blocks = [i for i, where in enumerate(placement) if where != "npu"]
    items = [
        ("blocks on the NPU", f"{len(placement) - len(cpu_blocks)} of {len(placement)}"),
        ("blocks on the CPU in FP", ", ".join(map(str, cpu_blocks)) or "none"),
    ]
    fp, ppl, budget = plan.get("fp_ppl_"), plan.get("ppl_"), plan.get("budget_relative_ppl")
    if fp and ppl is not None and budget is not None:
        verdict = "within" if ppl <= fp * (1 + budget) else "OVER"
        items.append(("validation PPL", f"{ppl:.3f} vs FP {fp:.3f} ({_percent_over(ppl, fp)}; {verdict} the +{100 * budget:g}% budget)"))
    body = legend + f'<div class="strip">{cells}</div>' + facts(items)
    evaluations = plan.get("evaluations_") or []
    if evaluations:
        chosen = sorted(cpu_blocks)
        body += "<p>Placements measured, in order (the search of §3.4 adds the most sensitive blocks to the CPU until the budget holds):</p>"
        body += table(
            ["CPU-FP blocks", "validation PPL", "vs FP"],
            [[", ".join(map(str, e["cpu_blocks"])) or "none (all on the NPU)", f"{e['ppl']:.3f}", _percent_over(e["ppl"], fp)] for e in evaluations],
            numeric_columns=(1, 2),
            highlight_rows=[i for i, e in enumerate(evaluations) if sorted(e["cpu_blocks"]) == chosen],
        )
    return Section("placement", title, body)


_MODE_TEXT = {
    "auto": "auto: each NPU graph A8 or A16, chosen on the deployed arithmetic under the budget",
    "8": "8: every NPU graph A8",
    "16": "16: every NPU graph A16",
}


def _block_placement(inputs: ReportInputs) -> list[str] | None:
    """Per block "npu" | "cpu-fp": a bundle's own manifest first (what it was exported with)."""
    return (inputs.manifest or {}).get("placement") or (inputs.placement or {}).get("placement")


def precision_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """Per-graph activation bits: the share of NPU MACs at A8, the search's Pareto curve
    (A8 share against validation ΔPPL) and the map of blocks × graphs. Left out when the
    calibration has no precision.json (made before per-graph precision existed)."""
    if inputs.precision is None:
        return None
    from quantkit.precision.plan import PrecisionPlan

    title = "Precision: activations and weights"
    try:
        precision = PrecisionPlan.from_dict(inputs.precision)
    except (ValueError, KeyError, TypeError) as error:
        return Section("precision", title, hint(f"precision.json cannot be read ({error}). Calibrate again:", "quantkit calibrate --out CALIB --overwrite"))
    placement = _block_placement(inputs)
    num_blocks = len(placement) if placement else 1 + max((g.block_index for g in precision.graphs.values()), default=-1)
    npu = {b for b in range(num_blocks) if not placement or placement[b] == "npu"}
    on_npu = [g for g in precision.graphs.values() if g.block_index in npu]
    a16 = sorted(g.name for g in on_npu if g.activation_bits == 16)
    share = precision.a8_mac_share(npu)
    config = inputs.settings
    items = [
        *([("preset", f"--precision {config['precision']}")] if config.get("precision") else []),
        ("mode", _MODE_TEXT.get(precision.mode, precision.mode)),
        ("NPU MACs at A8", f"{100 * share:.1f}% (the rest A16)" if on_npu else "none: every block is on the CPU"),
        *([("first positions in FP on the CPU (attention sink)", str(config["sink_tokens"]))] if config.get("sink_tokens") else []),
        ("NPU graphs at A16", f"{len(a16)} of {len(on_npu)}" + (f": {', '.join(a16[:12])}" + (", …" if len(a16) > 12 else "") if a16 else "")),
    ]
    four = [g for g in on_npu if g.weight_bits == 4]
    weights = (
        f"{len(four)} of {len(on_npu)} NPU graphs INT4"
        + (
            f" (LPBQ blocks of {', '.join(map(str, sorted({g.weight_block_size for g in four if g.weight_block_size})))})"
            if any(g.weight_block_size for g in four)
            else " (per output channel)"
            if four
            else ""
        )
        + (", the rest INT8" if len(four) < len(on_npu) else "")
    )
    with_offsets = [g for g in four if g.has_block_offsets]
    if with_offsets:
        weights += f"; {'/'.join(sorted({g.weight_block_offsets for g in with_offsets}))} block offsets on {len(with_offsets)} of the INT4 graphs"
    ratio = (inputs.summary or {}).get("npu_weight_bytes_vs_int8")
    if isinstance(ratio, (int, float)):
        weights += f"; NPU weight bytes {100 * ratio:.1f}% of INT8 weights"
    items.append(("NPU weights", weights))
    summary_figures = inputs.summary or {}
    for figure_name, label in (("prediction", "validation ΔPPL the decisions were made on"), ("confirmation", "validation ΔPPL on windows no decision saw")):
        point = summary_figures.get(figure_name)
        reference = (point or {}).get("fp") or summary_figures.get("perplexity", {}).get("fp")
        if isinstance(point, dict) and reference:
            items.append(
                (
                    label,
                    f"{100 * (point['ppl'] / reference - 1):+.2f}% (95% bounds {100 * (point['ppl_lower'] / reference - 1):+.2f}% … {100 * (point['ppl_upper'] / reference - 1):+.2f}%)",
                )
            )
    body = facts(items)

    fp = (inputs.summary or {}).get("perplexity", {}).get("fp") or (inputs.placement or {}).get("fp_ppl_")
    budget = (inputs.placement or {}).get("budget_relative_ppl")
    if budget is None:
        budget = inputs.settings.get("accuracy_budget")
    points = precision.search_
    if points and fp:
        promoted = sum(g.activation_bits == 16 for g in precision.graphs.values())
        chosen = next((i for i, point in enumerate(points) if point["promoted"] == promoted), None)
        deltas = [100 * (point["ppl"] / fp - 1) for point in points]
        summary = inputs.summary or {}
        placed = None
        # the calibration's final measurement, when it is of these bits (a bundle may be exported with others)
        if (
            isinstance(summary.get("a8_mac_share"), (int, float))
            and abs(summary["a8_mac_share"] - share) < 1e-9
            and isinstance(summary.get("perplexity", {}).get("quantkit"), (int, float))
        ):
            placed = (100 * summary["a8_mac_share"], 100 * (summary["perplexity"]["quantkit"] / fp - 1))
        plot_precision_pareto(
            [100 * point["a8_mac_share"] for point in points], deltas, chosen, None if budget is None else 100 * budget, folder / PARETO_PNG, placed=placed
        )
        body += figure(
            PARETO_PNG,
            "validation perplexity increase against the share of NPU MACs at A8",
            "Each point is measured on the deployed arithmetic with every block on the NPU: graphs promoted to A16 in order of KL per MAC. "
            "The chosen point is the fewest promotions within the budget (dashed line).",
        )
        body += table(
            ["graphs at A16", "MACs at A8 (every block on the NPU)", "validation PPL", "vs FP"],
            [[point["promoted"], f"{100 * point['a8_mac_share']:.1f}%", f"{point['ppl']:.3f}", f"{delta:+.2f}%"] for point, delta in zip(points, deltas)],
            numeric_columns=(0, 1, 2, 3),
            highlight_rows=[] if chosen is None else [chosen],
        )
    elif precision.mode == "auto":
        body += note("No search points in precision.json (or no FP perplexity in summary.json), so no Pareto curve.")

    by_cell = {
        (g.block_index, g.kind): ("W4A16+offsets" if g.has_block_offsets else "W4A16") if g.weight_bits == 4 else f"A{g.activation_bits}"
        for g in precision.graphs.values()
    }
    cells = [["CPU-FP" if b not in npu else by_cell.get((b, kind), "") for b in range(num_blocks)] for kind in _GRAPH_KINDS]
    plot_precision_map(cells, _GRAPH_KINDS, folder / PRECISION_MAP_PNG)
    body += figure(
        PRECISION_MAP_PNG,
        "map of weight and activation bits per block and graph",
        "Bits of each NPU graph per block (W8A8 dark blue, W8A16 light blue, W4A16 green, dark green with block offsets); red blocks run on the CPU in FP32.",
    )
    return Section("precision", title, body)


def _size(folder: Path, relatives) -> str:
    total = sum((folder / r).stat().st_size for r in relatives if (folder / r).is_file())
    return f"{total / 1e6:,.1f} MB"


def _bundle_bits(quantization: dict) -> str:
    """W8A8, W8A16, W4A16, or a mix with the share of NPU MACs at A8 (and the weight bytes against INT8's)."""
    bits = quantization.get("activation_bits", 8)
    weight_bits = quantization.get("weight_bits", 8)
    weights = "W4/W8" if weight_bits == "mixed" else f"W{weight_bits}"
    text = f"{weights}A{bits}" if bits != "mixed" else f"{weights}A8/A16 mixed"
    share = quantization.get("a8_mac_share")
    if bits == "mixed" and isinstance(share, (int, float)):
        text += f" ({100 * share:.0f}% of NPU MACs at A8)"
    ratio = quantization.get("npu_weight_bytes_vs_w8")
    if weight_bits != 8 and isinstance(ratio, (int, float)):
        text += f", weight bytes {100 * ratio:.1f}% of W8"
    return text


def bundle_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """What the deployment bundle holds (only when the report is drawn from a bundle)."""
    if inputs.source != "bundle" or inputs.manifest is None:
        return None
    manifest, bundle = inputs.manifest, inputs.source_path
    files = list(manifest.get("files", {}))
    quantization = manifest.get("quantization", {})
    source = manifest.get("source_model", {})
    target = manifest.get("qnn_target")
    items = [
        ("source model", f"{source.get('id', '?')} (sha256 {str(source.get('sha256', ''))[:16]}…)"),
        ("bundle format", f"{manifest.get('format')} v{manifest.get('version')}"),
        ("chunk size", f"{manifest.get('chunk_size')} tokens (static graph shape)"),
        ("activations", quantization.get("activations", "?")),
        ("weights", quantization.get("weights", "?")),
        (
            "NPU graphs",
            f"{len(manifest.get('graphs', []))} QDQ ONNX graphs, {_bundle_bits(quantization)}, {_size(bundle, [f for f in files if f.startswith('npu/')])}",
        ),
        ("shadow weights", f"resident {_size(bundle, ['shadow.safetensors'])}, cold (read on demand) {_size(bundle, ['shadow_cold.safetensors'])}"),
        ("CPU weights", _size(bundle, ["cpu.safetensors"])),
        (
            "QNN context binaries",
            ", ".join(f"{k} {v}" for k, v in target.items() if v is not None) if target else "none (add with `quantkit export --qnn-context`)",
        ),
    ]
    return Section("bundle", "Deployment bundle", facts(items) + note("Check it with: quantkit lint BUNDLE --qnn"))


def regress_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """The checks of an accuracy regression suite run: value, FP reference, limit, result."""
    results = inputs.regress
    if results is None:
        return None
    title = "Accuracy regression suite"
    if results.data is None:
        return _missing_results(
            "regress",
            title,
            results,
            "regression results",
            "The suite runs lm-eval on the bundles and the FP reference:",
            f"quantkit regress eval/suites/smollm2.yaml --out {results.path.parent}\nquantkit report --regress {results.path}",
        )
    data = results.data
    checks = data["checks"]
    rows = [
        [
            c["candidate"],
            c["task"],
            c["metric"],
            f"{c['value']:.4f}",
            "" if c.get("reference") is None else f"{c['reference']:.4f}",
            f"{c['check']} ({c['limit']:.4f})",
            "ok" if c["passed"] else "REGRESSED",
        ]
        for c in checks
    ]
    body = table(
        ["candidate", "task", "metric", "value", "FP", "check (limit)", "result"],
        rows,
        numeric_columns=(3, 4),
        highlight_rows=[i for i, c in enumerate(checks) if not c["passed"]],
    )
    failed = sum(1 for c in checks if not c["passed"])
    verdict = "passed" if not failed else f"{failed} of {len(checks)} checks regressed"
    body += note(f"Suite {data.get('suite', '?')}: {verdict} ({results.path.name}; highlighted rows regressed).")
    return Section("regress", title, body)


def profile_section(inputs: ReportInputs, folder: Path) -> Section | None:
    """HTP cycles per NPU graph from the QNN profiler, the bundle against every graph at A16."""
    results = inputs.profile
    if results is None:
        return None
    title = "NPU cost on the HTP"
    if results.data is None:
        return _missing_results(
            "profile",
            title,
            results,
            "HTP profile",
            "The QNN HTP profiler counts each graph's cycles:",
            f"quantkit profile BUNDLE --out {results.path.parent}\nquantkit report --profile {results.path}",
        )
    data = results.data
    graphs = data["graphs"]
    cycles, a16 = sum(g["cycles"] for g in graphs), sum(g["a16_cycles"] for g in graphs)
    plot_htp_cycles(graphs, folder / PROFILE_PNG)

    def rate(key: str) -> str:  # the projection quantkit profile wrote (HtpProfile.prefill_tokens_per_s)
        return f"{data[key]:,.0f} tokens/s" if isinstance(data.get(key), (int, float)) else "—"

    body = facts(
        [
            ("target", f"soc_model {data.get('soc_model')}" + (f", htp_arch {data['htp_arch']}" if data.get("htp_arch") else "")),
            ("this bundle", f"{cycles / 1e6:,.1f} M cycles per {data.get('chunk_size')}-token chunk → {rate('prefill_tokens_per_s')}"),
            ("every graph A16", f"{a16 / 1e6:,.1f} M cycles per chunk → {rate('prefill_tokens_per_s_a16')} ({a16 / cycles:.2f}× the cycles)"),
        ]
    )
    body += figure(PROFILE_PNG, "HTP cycles per NPU graph", "Cycles per chunk of each NPU graph as exported (bars) and at A16 (line).")
    body += note(
        f"QNN HTP profiler cycles ({results.path.name}); on a workstation the HTP is emulated, so they are a relative cost, not a device timing. "
        f"Tokens/s count the NPU graphs only, at an assumed HTP clock of {data.get('clock_ghz')} GHz."
    )
    return Section("profile", title, body)


SECTIONS: tuple[SectionBuilder, ...] = (
    summary_section,
    accuracy_section,
    regress_section,
    prefill_section,
    profile_section,
    outlier_section,
    sensitivity_section,
    placement_section,
    precision_section,
    bundle_section,
)

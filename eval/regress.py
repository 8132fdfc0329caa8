"""Accuracy regression suite: lm-eval on deployment bundles against the FP reference and
stored baselines, with JSON and JUnit XML results (``quantkit regress SUITE.yaml``).

A suite file (see ``eval/suites/smollm2.yaml``)::

    suite: smollm2
    reference: smollm2-135m            # FP model, run by lm-eval's own hf model
    limit: 200                         # items per task (omit for all)
    task_data: {num_lastword: 2000}    # optional: offline task sizes (TaskDataConfig fields)
    tasks:
      quantkit_wikitext: {metric: word_perplexity, max_relative_increase: 0.01}
      quantkit_lastword: {metric: acc, min_ratio_to_reference: 0.99}
      quantkit_choice:   {metric: acc_norm, min_ratio_to_reference: 0.99}
    candidates:
      quantkit:   {bundle: bundle}     # paths relative to the working directory
      naive_w8a8: {bundle: bundle-naive}
    baselines: smollm2.baselines.json  # optional, relative to the suite file
    baseline_tolerance: 0.005          # relative worsening allowed against a stored baseline
    include_path: [my_tasks]           # optional: folders of your own lm-eval task YAMLs (relative to the suite file)
    reference_batch_size: 16           # optional: lm-eval batch size of the FP reference (its hf model batches)

Checks per candidate and task: ``min_ratio_to_reference`` (higher is better: candidate ≥
r × FP), ``max_relative_increase`` (lower is better: candidate ≤ (1 + x) × FP),
``min_value`` / ``max_value`` (absolute floor / ceiling), and, when the baselines file
holds the candidate, "no worse than the stored value by more than baseline_tolerance".
"""

from __future__ import annotations

import json
import math
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.errors import EvaluationError

__all__ = ["Suite", "TaskCheck", "CheckResult", "RegressionReport", "load_suite", "run_suite", "compare", "SUITES_DIR"]

SUITES_DIR = Path(__file__).resolve().parent / "suites"
_LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"}
_TASK_KEYS = {"metric", "min_ratio_to_reference", "max_relative_increase", "min_value", "max_value"}
_SUITE_KEYS = {
    "suite",
    "reference",
    "limit",
    "task_data",
    "tasks",
    "candidates",
    "baselines",
    "baseline_tolerance",
    "npu",
    "include_path",
    "reference_batch_size",
}
_REFERENCE_MAX_LENGTH = 1024  # the hf model's window for the FP reference: the model's own 8192 needs far more memory here


@dataclass(frozen=True)
class TaskCheck:
    task: str
    metric: str
    min_ratio_to_reference: float | None = None
    max_relative_increase: float | None = None
    min_value: float | None = None
    max_value: float | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.metric in _LOWER_IS_BETTER


@dataclass(frozen=True)
class Suite:
    name: str
    reference: str
    tasks: tuple[TaskCheck, ...]
    candidates: dict[str, str]  # name → bundle path
    limit: int | float | None = None
    baselines: Path | None = None
    baseline_tolerance: float = 0.005
    npu: str = "cpu"
    path: Path | None = None
    task_data: dict = field(default_factory=dict)  # TaskDataConfig fields: the offline tasks' sizes
    include_paths: tuple[Path, ...] = ()  # folders of the user's own lm-eval task YAMLs
    reference_batch_size: int = 16

    def task_config(self):
        from quantkit.eval.tasks import TaskDataConfig

        return TaskDataConfig(**self.task_data)


@dataclass
class CheckResult:
    candidate: str
    task: str
    metric: str
    check: str  # e.g. "≥ 0.99 × FP"
    value: float
    limit: float
    reference: float | None
    passed: bool


@dataclass
class RegressionReport:
    suite: str
    reference: dict[str, float]  # task → FP metric
    candidates: dict[str, dict[str, float]]  # candidate → task → metric
    checks: list[CheckResult] = field(default_factory=list)
    # wall seconds of each evaluation: "reference" (None when read from the cache) and each candidate
    seconds: dict[str, float | None] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]

    def table(self) -> str:
        rows = [("candidate", "task", "metric", "value", "FP", "check", "limit", "result")]
        for c in self.checks:
            reference = "" if c.reference is None else f"{c.reference:.4f}"
            rows.append((c.candidate, c.task, c.metric, f"{c.value:.4f}", reference, c.check, f"{c.limit:.4f}", "ok" if c.passed else "REGRESSED"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "passed": self.passed,
            "reference": self.reference,
            "candidates": self.candidates,
            "checks": [asdict(c) for c in self.checks],
            "seconds": self.seconds,
        }

    def timings(self) -> str:
        """One line per evaluation: how long the reference and each candidate took."""
        lines = []
        for name, seconds in self.seconds.items():
            took = "cached" if seconds is None else f"{int(seconds // 60)} min {seconds % 60:.0f} s"
            lines.append(f"{'FP reference' if name == 'reference' else 'candidate ' + name}: {took}")
        return "\n".join(lines)

    def junit_xml(self) -> str:
        """JUnit XML: one test case per check, a failure element for each regression."""
        root = ElementTree.Element("testsuites", name=f"quantkit regress {self.suite}")
        suite = ElementTree.SubElement(root, "testsuite", name=self.suite, tests=str(len(self.checks)), failures=str(len(self.failures)), errors="0")
        for c in self.checks:
            case = ElementTree.SubElement(suite, "testcase", classname=f"{self.suite}.{c.candidate}", name=f"{c.task}.{c.metric} {c.check}")
            if self.seconds.get(c.candidate) is not None:  # the candidate's whole evaluation, on each of its checks
                case.set("time", f"{self.seconds[c.candidate]:.1f}")
            if not c.passed:
                failure = ElementTree.SubElement(case, "failure", message=f"{c.candidate} {c.task} {c.metric} = {c.value:.4f}, limit {c.check} = {c.limit:.4f}")
                failure.text = f"value {c.value}\nlimit {c.limit}\nFP reference {c.reference}"
        ElementTree.indent(root)
        return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _number(where: str, key: str, value, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (low is not None and value < low):
        raise EvaluationError(f"{where}: {key} must be a number{'' if low is None else f' ≥ {low}'}, got {value!r}")
    return float(value)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is an EvaluationError naming the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in SUITES_DIR.glob("*.yaml"))
        raise EvaluationError(f"{path}: no such suite file (shipped suites: {', '.join(str(SUITES_DIR / n) for n in shipped)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise EvaluationError(f"{path}: not valid YAML — {error}") from None
    if not isinstance(data, dict):
        raise EvaluationError(f"{path}: a suite is a mapping with keys {', '.join(sorted(_SUITE_KEYS))}; got {type(data).__name__}")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise EvaluationError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_SUITE_KEYS))}")
    for required in ("reference", "tasks", "candidates"):
        if required not in data:
            raise EvaluationError(f"{path}: missing key {required!r}")
    if not isinstance(data["tasks"], dict) or not data["tasks"]:
        raise EvaluationError(f"{path}: tasks must map task names to checks, e.g. quantkit_lastword: {{metric: acc, min_ratio_to_reference: 0.99}}")
    checks = []
    for task, spec in data["tasks"].items():
        where = f"{path}: tasks.{task}"
        if not isinstance(spec, dict) or "metric" not in spec:
            raise EvaluationError(f"{where}: needs a mapping with 'metric' and at least one threshold")
        unknown = set(spec) - _TASK_KEYS
        if unknown:
            raise EvaluationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_TASK_KEYS))}")
        thresholds = {k: _number(where, k, v, 0) for k, v in spec.items() if k != "metric"}
        if not thresholds:
            raise EvaluationError(f"{where}: no threshold; give min_ratio_to_reference, max_relative_increase, min_value or max_value")
        checks.append(TaskCheck(task=str(task), metric=str(spec["metric"]), **thresholds))
    if not isinstance(data["candidates"], dict) or not data["candidates"]:
        raise EvaluationError(f"{path}: candidates must map names to {{bundle: PATH}}")
    candidates = {}
    for name, spec in data["candidates"].items():
        if not isinstance(spec, dict) or set(spec) != {"bundle"}:
            raise EvaluationError(f"{path}: candidates.{name} must be {{bundle: PATH}}, got {spec!r}")
        candidates[str(name)] = str(spec["bundle"])
    baselines = data.get("baselines")
    limit = data.get("limit")
    if limit is not None:
        limit = _number(f"{path}", "limit", limit, 0)
        limit = int(limit) if limit >= 1 else limit
    task_data = _task_data(path, data.get("task_data", {}))
    include = data.get("include_path", [])
    include = [include] if isinstance(include, str) else include
    if not isinstance(include, list) or not all(isinstance(p, str) for p in include):
        raise EvaluationError(f"{path}: include_path must be a folder or a list of folders of lm-eval task YAMLs, got {include!r}")
    include_paths = tuple(path.parent / p for p in include)
    for folder in include_paths:
        if not folder.is_dir():
            raise EvaluationError(f"{path}: include_path {folder} is not a folder (paths are relative to the suite file)")
    batch = data.get("reference_batch_size", 16)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EvaluationError(f"{path}: reference_batch_size must be a positive integer, got {batch!r}")
    return Suite(
        name=str(data.get("suite", path.stem)),
        reference=str(data["reference"]),
        tasks=tuple(checks),
        candidates=candidates,
        limit=limit,
        baselines=(path.parent / baselines) if baselines else None,
        baseline_tolerance=_number(f"{path}", "baseline_tolerance", data.get("baseline_tolerance", 0.005), 0),
        npu=str(data.get("npu", "cpu")),
        path=path,
        task_data=task_data,
        include_paths=include_paths,
        reference_batch_size=batch,
    )


def _task_data(path: Path, values) -> dict:
    """The suite's ``task_data`` mapping, checked against TaskDataConfig's fields."""
    import dataclasses

    from quantkit.eval.tasks import TaskDataConfig

    fields = [f.name for f in dataclasses.fields(TaskDataConfig) if f.name != "version"]
    if not isinstance(values, dict):
        raise EvaluationError(f"{path}: task_data must map settings to values, e.g. task_data: {{num_lastword: 2000}}; got {values!r}")
    unknown = set(values) - set(fields)
    if unknown:
        raise EvaluationError(f"{path}: task_data: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected {', '.join(fields)}")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise EvaluationError(f"{path}: task_data.{key} must be an integer, got {value!r}")
    try:
        TaskDataConfig(**values)
    except ValueError as error:
        raise EvaluationError(f"{path}: task_data: {error}") from None
    return dict(values)


def _metric(results: dict, task: str, metric: str, who: str) -> float:
    values = results["results"].get(task, {})
    for key, value in values.items():
        if key.partition(",")[0] == metric and isinstance(value, (int, float)):
            return float(value)
    available = sorted({k.partition(",")[0] for k in values if not k.endswith("stderr") and k != "alias"})
    raise EvaluationError(f"{who}: task {task} reports no metric {metric!r}; it reports {', '.join(available)}")


def compare(
    suite: Suite, reference: dict[str, float], candidates: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]] | None = None
) -> RegressionReport:
    """Apply the suite's checks to measured metrics (task → value per candidate)."""
    report = RegressionReport(suite.name, reference, candidates)
    for name, measured in candidates.items():
        for check in suite.tasks:
            value, fp = measured[check.task], reference[check.task]

            def add(label: str, limit: float, passed: bool, ref: float | None = fp) -> None:
                report.checks.append(CheckResult(name, check.task, check.metric, label, value, limit, ref, passed and math.isfinite(value)))

            if check.min_ratio_to_reference is not None:
                limit = check.min_ratio_to_reference * fp
                add(f"≥ {check.min_ratio_to_reference:g} × FP", limit, value >= limit)
            if check.max_relative_increase is not None:
                limit = (1 + check.max_relative_increase) * fp
                add(f"≤ FP + {check.max_relative_increase:.1%}", limit, value <= limit)
            if check.min_value is not None:
                add(f"≥ {check.min_value:g}", check.min_value, value >= check.min_value)
            if check.max_value is not None:
                add(f"≤ {check.max_value:g}", check.max_value, value <= check.max_value)
            stored = (baselines or {}).get(name, {}).get(check.task)
            if stored is not None:
                if check.lower_is_better:
                    limit = stored * (1 + suite.baseline_tolerance)
                    add(f"≤ baseline + {suite.baseline_tolerance:.1%}", limit, value <= limit, None)
                else:
                    limit = stored * (1 - suite.baseline_tolerance)
                    add(f"≥ baseline − {suite.baseline_tolerance:.1%}", limit, value >= limit, None)
    return report


def _reference_results(
    suite: Suite, tasks: list[str], task_settings: str, task_config, evaluate: Callable[..., dict], output: Path, fresh: bool
) -> tuple[dict, bool]:
    """The FP reference's lm-eval results, cached in the quantkit cache under a key of
    everything they depend on: the model's source sha256, tasks, limit, the offline task
    data settings, the user's task files and the lm-eval version. Candidates change
    between runs; FP does not. The reference runs with lm-eval's batching
    (``reference_batch_size``)."""
    import hashlib
    import os

    import lm_eval

    from quantkit.cache import cache_dir
    from quantkit.errors import ModelLoadError
    from quantkit.models.loading import prepare_model_folder

    try:
        _, model_sha = prepare_model_folder(suite.reference)
    except ModelLoadError as error:
        raise EvaluationError(f"reference {suite.reference!r}: {error}") from None
    from quantkit.eval.hf_reference import FP_REFERENCE_MODEL

    key = {
        "reference": suite.reference,
        "model": FP_REFERENCE_MODEL,
        "sha256": model_sha,
        "tasks": tasks,
        "limit": suite.limit,
        "task_settings": task_settings,
        "lm_eval": lm_eval.__version__,
    }
    if suite.include_paths:  # the user's own task files: their contents are part of what FP measured
        digest = hashlib.sha256()
        for path in sorted(p for folder in suite.include_paths for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.name.encode() + path.read_bytes())
        key["include_path_sha256"] = digest.hexdigest()
    cached = cache_dir("eval", "reference", hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if cached.is_file() and not fresh:
        results = json.loads(cached.read_text())
        output.write_text(json.dumps(results, indent=2) + "\n")
        return results, True
    results = evaluate(
        suite.reference,
        tasks,
        limit=suite.limit,
        output=output,
        task_config=task_config,
        batch_size=suite.reference_batch_size,
        max_length=_REFERENCE_MAX_LENGTH,
        include_paths=suite.include_paths,
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    partial.write_text(output.read_text() if output.is_file() else json.dumps(results))
    os.replace(partial, cached)
    return json.loads(cached.read_text()), False


def _measurement_settings(suite: Suite, tasks: list[str], task_settings: str) -> dict:
    """What stored values depend on besides the bundle: tasks, metrics, item limit and the
    offline task data (its settings.json names the source text's sha256)."""
    import hashlib

    data = hashlib.sha256(task_settings.encode()).hexdigest()
    return {"tasks": {c.task: c.metric for c in suite.tasks if c.task in tasks}, "limit": suite.limit, "task_data_sha256": data}


def _stored_baselines(suite: Suite, measured_under: dict, updating: bool) -> dict:
    """Stored values per candidate; refused when recorded under other settings (a
    baseline of 100 items says nothing about a run over 200)."""
    if suite.baselines is None or not suite.baselines.is_file():
        return {}
    remedy = "run with --update-baselines to record new ones"
    try:
        stored = json.loads(suite.baselines.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{suite.baselines}: not valid JSON ({error}); {remedy}") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("candidates"), dict) or "measured_under" not in stored:
        raise EvaluationError(f"{suite.baselines}: not a baselines file written by `quantkit regress --update-baselines`; {remedy}")
    if stored["measured_under"] != measured_under:
        if updating:
            return {}
        raise EvaluationError(f"{suite.baselines}: recorded under other settings ({stored['measured_under']}), not this suite's ({measured_under}); {remedy}")
    return stored["candidates"]


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    only: Sequence[str] | None = None,
    bundles: dict[str, str] | None = None,
    update_baselines: bool = False,
    fresh_reference: bool = False,
    evaluate: Callable[..., dict] | None = None,
) -> RegressionReport:
    """Evaluate the FP reference and each candidate bundle on the suite's tasks, compare,
    and write OUT/results.json, OUT/junit.xml, OUT/<candidate>.lm_eval.json.

    ``only`` selects candidates; ``bundles`` overrides their paths; ``update_baselines``
    stores the measured values in the suite's baselines file (after the comparison). The
    FP reference's results are cached (see :func:`_reference_results`); ``fresh_reference``
    evaluates it again.

    >>> report = run_suite(load_suite("eval/suites/smollm2.yaml"), "regress/")   # doctest: +SKIP
    >>> report.passed                                                             # doctest: +SKIP
    """
    from quantkit.eval.harness import evaluate as lm_eval_evaluate
    from quantkit.eval.harness import is_bundle
    from quantkit.eval.tasks import build_task_data, check_task_names, task_manager

    evaluate = evaluate or lm_eval_evaluate
    candidates = dict(suite.candidates)
    for name, bundle in (bundles or {}).items():
        if name not in candidates:
            raise EvaluationError(f"--bundle {name}=…: the suite has no candidate {name!r}; its candidates are {', '.join(candidates)}")
        candidates[name] = bundle
    if only:
        missing = [n for n in only if n not in candidates]
        if missing:
            raise EvaluationError(f"unknown candidate(s) {', '.join(missing)}; the suite's candidates are {', '.join(candidates)}")
        candidates = {n: candidates[n] for n in only}
    for name, bundle in candidates.items():  # fail before any evaluation runs
        if not is_bundle(bundle):
            raise EvaluationError(
                f"candidate {name}: {bundle} is not a bundle folder (no manifest.json); make it with `quantkit export`, or pass --bundle {name}=PATH"
            )
    tasks = [check.task for check in suite.tasks]
    offline = all(task.startswith("quantkit") for task in tasks)
    task_config = suite.task_config()
    check_task_names(task_manager(task_config, include_defaults=not offline, include_paths=suite.include_paths), tasks)
    task_settings = (build_task_data(task_config) / "settings.json").read_text()  # what the offline task files were built from
    measured_under = _measurement_settings(suite, tasks, task_settings)
    baselines = _stored_baselines(suite, measured_under, update_baselines)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float | None] = {}
    began = time.perf_counter()
    results, from_cache = _reference_results(suite, tasks, task_settings, task_config, evaluate, out / "reference.lm_eval.json", fresh_reference)
    seconds["reference"] = None if from_cache else time.perf_counter() - began
    reference = {check.task: _metric(results, check.task, check.metric, f"reference {suite.reference}") for check in suite.tasks}
    measured = {}
    for name, bundle in candidates.items():
        began = time.perf_counter()
        results = evaluate(
            bundle, tasks, limit=suite.limit, npu=suite.npu, output=out / f"{name}.lm_eval.json", task_config=task_config, include_paths=suite.include_paths
        )
        seconds[name] = time.perf_counter() - began
        measured[name] = {check.task: _metric(results, check.task, check.metric, f"candidate {name}") for check in suite.tasks}
    report = compare(suite, reference, measured, baselines)
    report.seconds = seconds
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    (out / "junit.xml").write_text(report.junit_xml())
    if update_baselines:
        if suite.baselines is None:
            raise EvaluationError(f"{suite.path}: no 'baselines' file named in the suite; add e.g. baselines: {suite.name}.baselines.json")
        stored = {"measured_under": measured_under, "candidates": {**baselines, **measured}}
        suite.baselines.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return report

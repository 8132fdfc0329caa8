"""``quantkit regress``: suite files, threshold checks, baselines, JSON/JUnit output, and one
real end-to-end run (lm-eval on a tiny bundle and its FP model)."""

import json
import xml.etree.ElementTree as ElementTree

import pytest
from quantkit.eval.regress import SUITES_DIR, Suite, TaskCheck, compare, load_suite, run_suite

from quantkit.cli import main
from quantkit.errors import EvaluationError

SUITE = """
suite: tiny
reference: {reference}
limit: 3
tasks:
  quantkit_lastword: {{metric: acc, min_ratio_to_reference: 0.0}}
  quantkit_wikitext: {{metric: word_perplexity, max_relative_increase: {increase}}}
candidates:
  good: {{bundle: {bundle}}}
baselines: tiny.baselines.json
"""


def _suite(tmp_path, **values) -> object:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(**values))
    return path


def test_shipped_suite_loads():
    suite = load_suite(SUITES_DIR / "smollm2.yaml")
    assert suite.reference == "smollm2-135m" and set(suite.candidates) == {"quantkit", "naive_w8a8"}
    assert {c.task for c in suite.tasks} == {"quantkit_wikitext", "quantkit_lastword", "quantkit_choice"}
    assert suite.baselines == SUITES_DIR / "smollm2.baselines.json"
    assert suite.task_config().num_lastword == 2000  # enough items to resolve a 1% threshold


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks: [oops", "not valid YAML"),
        ("- a list", "a suite is a mapping"),
        ("reference: x\ntasks: {t: {metric: acc, min_ratio_to_reference: 0.99}}\ncandidates: {a: {bundle: b}}\ncolour: red", "unknown key(s) colour"),
        ("reference: x\ncandidates: {a: {bundle: b}}", "missing key 'tasks'"),
        ("reference: x\ntasks: {t: {metric: acc}}\ncandidates: {a: {bundle: b}}", "no threshold"),
        ("reference: x\ntasks: {t: {metric: acc, min_ratio_to_reference: high}}\ncandidates: {a: {bundle: b}}", "min_ratio_to_reference must be a number"),
        ("reference: x\ntasks: {t: {metric: acc, min_ratio: 0.9}}\ncandidates: {a: {bundle: b}}", "unknown key(s) min_ratio"),
        ("reference: x\ntasks: {t: {metric: acc, min_value: 0.1}}\ncandidates: {a: b}", "must be {bundle: PATH}"),
        (
            "reference: x\ntask_data: {num_items: 5}\ntasks: {t: {metric: acc, min_value: 0.1}}\ncandidates: {a: {bundle: b}}",
            "task_data: unknown key(s) num_items",
        ),
        (
            "reference: x\ntask_data: {num_lastword: many}\ntasks: {t: {metric: acc, min_value: 0.1}}\ncandidates: {a: {bundle: b}}",
            "task_data.num_lastword must be an integer",
        ),
        (
            "reference: x\ntask_data: {num_lastword: 0}\ntasks: {t: {metric: acc, min_value: 0.1}}\ncandidates: {a: {bundle: b}}",
            "num_lastword: got 0, expected at least 1",
        ),
        ("reference: x\ntask_data: 2000\ntasks: {t: {metric: acc, min_value: 0.1}}\ncandidates: {a: {bundle: b}}", "task_data must map settings to values"),
    ],
)
def test_malformed_suites_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(EvaluationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        load_suite(path)
    with pytest.raises(EvaluationError, match="no such suite file"):
        load_suite(tmp_path / "missing.yaml")


def test_checks_against_the_reference_floors_and_baselines():
    suite = Suite(
        "s",
        "fp",
        (
            TaskCheck("acc_task", "acc", min_ratio_to_reference=0.99, min_value=0.3),
            TaskCheck("ppl_task", "word_perplexity", max_relative_increase=0.01, max_value=30),
        ),
        {"a": "x", "b": "y"},
    )
    reference = {"acc_task": 0.50, "ppl_task": 20.0}
    measured = {"a": {"acc_task": 0.496, "ppl_task": 20.19}, "b": {"acc_task": 0.49, "ppl_task": 20.3}}
    report = compare(suite, reference, measured, baselines={"a": {"acc_task": 0.52}})
    results = {(c.candidate, c.task, c.check): c.passed for c in report.checks}
    assert results[("a", "acc_task", "≥ 0.99 × FP")] and results[("a", "ppl_task", "≤ FP + 1.0%")]
    assert not results[("a", "acc_task", "≥ baseline − 0.5%")]  # 0.496 < 0.52 × 0.995
    assert not results[("b", "acc_task", "≥ 0.99 × FP")] and not results[("b", "ppl_task", "≤ FP + 1.0%")]
    assert results[("b", "acc_task", "≥ 0.3")] and results[("b", "ppl_task", "≤ 30")]
    assert not report.passed and len(report.failures) == 3
    assert "REGRESSED" in report.table()
    xml = ElementTree.fromstring(report.junit_xml())
    suite_element = xml.find("testsuite")
    assert suite_element.get("tests") == str(len(report.checks)) and suite_element.get("failures") == "3"
    assert len(xml.findall(".//failure")) == 3


def test_nan_never_passes():
    suite = Suite("s", "fp", (TaskCheck("t", "word_perplexity", max_relative_increase=0.01),), {"a": "x"})
    assert not compare(suite, {"t": 20.0}, {"a": {"t": float("nan")}}).passed


def test_missing_bundle_and_unknown_candidate_fail_before_evaluating(tmp_path, tiny_bundle):
    path = _suite(tmp_path, reference=tiny_bundle.parent / "model", bundle=tmp_path / "nowhere", increase=0.5)
    calls = []
    with pytest.raises(EvaluationError, match="is not a bundle folder"):
        run_suite(load_suite(path), tmp_path / "out", evaluate=lambda *a, **k: calls.append(a))
    with pytest.raises(EvaluationError, match="unknown candidate"):
        run_suite(load_suite(path), tmp_path / "out", only=["other"], evaluate=lambda *a, **k: calls.append(a))
    assert calls == []


def test_unknown_task_is_a_clear_error(tmp_path, tiny_bundle):
    path = tmp_path / "suite.yaml"
    path.write_text(f"reference: x\ntasks: {{quantkit_nope: {{metric: acc, min_value: 0}}}}\ncandidates: {{a: {{bundle: {tiny_bundle}}}}}\n")
    with pytest.raises(EvaluationError, match="unknown task 'quantkit_nope'"):
        run_suite(load_suite(path), tmp_path / "out")


def test_regress_end_to_end_on_a_tiny_bundle(tmp_path, tiny_bundle, capsys):
    """Real lm-eval runs: FP model (hf) vs the bundle (runtime); a loose suite passes, a
    strict one fails with a table; baselines are stored and then checked."""
    loose = _suite(tmp_path, reference=tiny_bundle.parent / "model", bundle=tiny_bundle, increase=0.5)
    out = tmp_path / "loose"
    assert main(["regress", str(loose), "--out", str(out), "--update-baselines"]) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed and "quantkit_wikitext" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] and set(results["candidates"]["good"]) == {"quantkit_lastword", "quantkit_wikitext"}
    assert ElementTree.parse(out / "junit.xml").getroot().find("testsuite").get("failures") == "0"
    baselines = json.loads((tmp_path / "tiny.baselines.json").read_text())
    assert baselines["candidates"]["good"] == results["candidates"]["good"] and baselines["measured_under"]["limit"] == 3
    assert (out / "good.lm_eval.json").is_file() and (out / "reference.lm_eval.json").is_file()

    strict = tmp_path / "strict.yaml"  # a perplexity at or below FP × 0.5: the quantized bundle cannot meet it
    strict.write_text(loose.read_text().replace("max_relative_increase: 0.5", "max_value: 0.5"))
    assert main(["regress", str(strict), "--out", str(tmp_path / "strict"), "--bundle", f"good={tiny_bundle}"]) == 1
    printed = capsys.readouterr().out
    assert "REGRESSED" in printed and "good quantkit_wikitext word_perplexity" in printed
    assert "≥ baseline − 0.5%" in printed  # the stored baselines were checked too
    assert ElementTree.parse(tmp_path / "strict" / "junit.xml").getroot().find("testsuite").get("failures") == "1"


def test_cli_errors(tmp_path, capsys):
    assert main(["regress", str(tmp_path / "none.yaml")]) == 2
    assert "no such suite file" in capsys.readouterr().err
    assert main(["regress", str(SUITES_DIR / "smollm2.yaml"), "--bundle", "quantkit"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err


def test_fp_reference_results_are_cached(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setattr("quantkit.cache.cache_dir", lambda *parts: tmp_path.joinpath("cache", *parts))
    calls = []

    def fake_evaluate(model, tasks, limit=None, npu="cpu", output=None, task_config=None, **settings):
        calls.append(str(model))
        return {"results": {"quantkit_lastword": {"acc,none": 0.5}, "quantkit_wikitext": {"word_perplexity,none": 10.0}}}

    suite = load_suite(_suite(tmp_path, reference=tiny_bundle.parent / "model", bundle=tiny_bundle, increase=0.5))
    reports = [run_suite(suite, tmp_path / "out", evaluate=fake_evaluate, fresh_reference=fresh) for fresh in (False, False, True)]
    assert all(report.passed for report in reports)
    # each evaluation's wall time is reported; a cached reference took none
    assert [report.seconds["reference"] is None for report in reports] == [False, True, False]
    assert all(report.seconds["good"] >= 0 for report in reports)
    assert "FP reference: cached" in reports[1].timings() and "candidate good: 0 min" in reports[1].timings()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["seconds"]["reference"] is not None
    assert 'time="' in (tmp_path / "out" / "junit.xml").read_text()
    reference = str(tiny_bundle.parent / "model")
    assert calls.count(reference) == 2 and calls.count(str(tiny_bundle)) == 3  # cached once, then fresh
    assert json.loads((tmp_path / "out" / "reference.lm_eval.json").read_text())["results"]["quantkit_lastword"]["acc,none"] == 0.5


def test_baselines_recorded_under_other_settings_are_refused(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setattr("quantkit.cache.cache_dir", lambda *parts: tmp_path.joinpath("cache", *parts))

    def fake_evaluate(model, tasks, limit=None, npu="cpu", output=None, task_config=None, **settings):
        return {"results": {"quantkit_lastword": {"acc,none": 0.5}, "quantkit_wikitext": {"word_perplexity,none": 10.0}}}

    path = _suite(tmp_path, reference=tiny_bundle.parent / "model", bundle=tiny_bundle, increase=0.5)
    run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate, update_baselines=True)
    assert run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate).passed
    path.write_text(path.read_text().replace("limit: 3", "limit: 5"))
    with pytest.raises(EvaluationError, match="recorded under other settings"):
        run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate)
    run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate, update_baselines=True)  # re-recorded
    assert json.loads((tmp_path / "tiny.baselines.json").read_text())["measured_under"]["limit"] == 5
    (tmp_path / "tiny.baselines.json").write_text('{"good": {}}')
    with pytest.raises(EvaluationError, match="not a baselines file"):
        run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate)


def test_task_data_sizes_reach_every_evaluation_and_key_the_cached_reference(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    seen = []

    def fake_evaluate(model, tasks, limit=None, npu="cpu", output=None, task_config=None, **settings):
        seen.append((str(model), task_config.num_lastword))
        return {"results": {"quantkit_lastword": {"acc,none": 0.5}, "quantkit_wikitext": {"word_perplexity,none": 10.0}}}

    path = _suite(tmp_path, reference=tiny_bundle.parent / "model", bundle=tiny_bundle, increase=0.5)
    sized = path.read_text().replace("limit: 3", "limit: 3\ntask_data: {num_docs: 3, num_lastword: 9, num_choice: 4}")
    path.write_text(sized)
    suite = load_suite(path)
    assert suite.task_config().num_lastword == 9 and suite.task_config().num_choices == 4  # unnamed sizes keep their defaults
    run_suite(suite, tmp_path / "out", evaluate=fake_evaluate)
    assert seen == [(str(tiny_bundle.parent / "model"), 9), (str(tiny_bundle), 9)]
    path.write_text(sized.replace("num_lastword: 9", "num_lastword: 8"))
    run_suite(load_suite(path), tmp_path / "out", evaluate=fake_evaluate)
    assert seen[2:] == [(str(tiny_bundle.parent / "model"), 8), (str(tiny_bundle), 8)]  # other sizes: the reference runs again


def test_include_path_and_reference_batching_reach_evaluate(tmp_path, tiny_bundle, monkeypatch):
    """A suite's include_path (relative to the suite file) goes to every evaluation, the
    FP reference runs with lm-eval's batching, and bad values are named."""
    monkeypatch.setattr("quantkit.cache.cache_dir", lambda *parts: tmp_path.joinpath("cache", *parts))
    (tmp_path / "my_tasks").mkdir()
    (tmp_path / "my_tasks" / "mine.yaml").write_text("task: mine\n")
    path = tmp_path / "suite.yaml"
    reference_model = tiny_bundle.parent / "model"
    path.write_text(
        f"reference: {reference_model}\ninclude_path: my_tasks\nreference_batch_size: 8\ntasks:\n  mine: {{metric: acc, min_value: 0.1}}\ncandidates:\n  q: {{bundle: {tiny_bundle}}}\n"
    )
    suite = load_suite(path)
    assert suite.include_paths == (tmp_path / "my_tasks",) and suite.reference_batch_size == 8
    calls = []

    def fake_evaluate(model, tasks, limit=None, npu="cpu", output=None, task_config=None, **settings):
        calls.append((model, settings))
        return {"results": {"mine": {"acc,none": 0.5}}}

    assert run_suite(suite, tmp_path / "out", evaluate=fake_evaluate).passed
    (reference, reference_settings), (candidate, candidate_settings) = calls
    assert str(reference) == str(reference_model) and reference_settings["batch_size"] == 8 and reference_settings["include_paths"] == (tmp_path / "my_tasks",)
    assert candidate_settings == {"include_paths": (tmp_path / "my_tasks",)}
    path.write_text(path.read_text().replace("include_path: my_tasks", "include_path: missing"))
    with pytest.raises(EvaluationError, match="include_path .*missing is not a folder"):
        load_suite(path)

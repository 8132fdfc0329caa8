"""``quantkit.eval.evaluate`` and ``quantkit eval``: lm-eval end to end on a tiny bundle
(the runtime) and on its FP model (lm-eval's hf model), and the errors a user sees."""

import json
import math

import pytest
from quantkit.eval import OFFLINE_TASKS, evaluate, results_table

from quantkit.cli import main
from quantkit.errors import EvaluationError

LIMIT = 3


@pytest.fixture(scope="module")
def bundle_results(tiny_bundle, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval-results") / "results.json"
    return evaluate(tiny_bundle, "quantkit_offline", limit=LIMIT, output=output), output


def test_bundle_runs_every_offline_task(bundle_results):
    results, output = bundle_results
    assert results["config"]["model"] == "quantkit"
    metrics = results["results"]
    assert set(OFFLINE_TASKS) <= set(metrics)
    assert all(metrics[task]["sample_len"] == LIMIT for task in OFFLINE_TASKS)
    wikitext = metrics["quantkit_wikitext"]
    # A random 320-token model: roughly uniform, so about log2(320) bits per token.
    assert 1 < wikitext["word_perplexity,none"] and 0 < wikitext["bits_per_byte,none"] < 2 * math.log2(320)
    assert wikitext["byte_perplexity,none"] == pytest.approx(2 ** wikitext["bits_per_byte,none"])
    assert 0 <= metrics["quantkit_lastword"]["acc,none"] <= 1 and metrics["quantkit_lastword"]["perplexity,none"] > 1
    assert {"acc,none", "acc_norm,none"} <= set(metrics["quantkit_choice"])
    assert json.loads(output.read_text())["results"]["quantkit_choice"]["acc,none"] == metrics["quantkit_choice"]["acc,none"]
    table = results_table(results)
    assert "quantkit_wikitext  word_perplexity" in table and "sample_len" not in table


def test_fp_reference_runs_through_lm_evals_hf_model(tiny_bundle, bundle_results):
    results = evaluate(tiny_bundle.parent / "model", "quantkit_lastword", limit=LIMIT)
    assert results["config"]["model"] == "hf-scored"  # lm-eval's hf model, LM head at the scored positions only
    fp = results["results"]["quantkit_lastword"]["perplexity,none"]
    quantized = bundle_results[0]["results"]["quantkit_lastword"]["perplexity,none"]
    # Same tokenizer, same requests: the INT8 bundle stays close to its FP model.
    assert abs(math.log(quantized) - math.log(fp)) < 0.01 * math.log(fp)


def test_cli_eval_prints_a_table_and_writes_json(tiny_bundle, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    assert main(["eval", str(tiny_bundle), "--tasks", "quantkit_lastword", "--limit", "2", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "quantkit_lastword  acc" in printed and "quantkit_lastword  perplexity" in printed
    assert json.loads(output.read_text())["results"]["quantkit_lastword"]["sample_len"] == 2


def test_errors(tiny_bundle, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), "--tasks", "quantkit_lastword"]) == 2
    assert "is neither a bundle folder (one with manifest.json" in capsys.readouterr().err
    assert main(["eval", str(tiny_bundle), "--tasks", "quantkit_lastwrd"]) == 2
    assert "unknown task 'quantkit_lastwrd'; the offline tasks are quantkit_offline" in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="npu: got 'gpu'"):
        evaluate(tiny_bundle, "quantkit_lastword", npu="gpu")
    with pytest.raises(EvaluationError, match="no task given"):
        evaluate(tiny_bundle, " , ")


def _own_task(folder, data):
    """A user's lm-eval task YAML (a rolling-loglikelihood task over their own JSONL)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": "The quick brown fox jumps over the lazy dog. " * 3}, {"text": "A second document of plain English text for the test."}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "my_text.yaml").write_text(
        "task: my_own_text\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    return folder


def test_include_path_runs_a_users_own_task(tiny_bundle, tmp_path, capsys):
    tasks = _own_task(tmp_path / "my_tasks", tmp_path / "my_text.jsonl")
    results = evaluate(tiny_bundle, "my_own_text", include_paths=[tasks])
    assert results["results"]["my_own_text"]["word_perplexity,none"] > 1
    assert main(["eval", str(tiny_bundle), "--tasks", "my_own_text", "--include-path", str(tasks)]) == 0
    assert "my_own_text  word_perplexity" in capsys.readouterr().out
    with pytest.raises(EvaluationError, match="is not a folder"):
        evaluate(tiny_bundle, "my_own_text", include_paths=[tmp_path / "missing"])


def test_lm_eval_command_line_runs_the_quantkit_model(tiny_bundle, tmp_path):
    """`quantkit lm-eval` takes exactly lm-eval's arguments and gives evaluate()'s numbers."""
    tasks = _own_task(tmp_path / "my_tasks", tmp_path / "my_text.jsonl")
    out = tmp_path / "lm_eval_out"
    code = main(
        [
            "lm-eval",
            "--model",
            "quantkit",
            "--model_args",
            f"bundle={tiny_bundle}",
            "--tasks",
            "my_own_text",
            "--include_path",
            str(tasks),
            "--output_path",
            str(out),
        ]
    )
    assert code == 0
    written = [json.loads(p.read_text()) for p in out.rglob("results_*.json")]
    assert written, list(out.rglob("*"))
    expected = evaluate(tiny_bundle, "my_own_text", include_paths=[tasks])["results"]["my_own_text"]["word_perplexity,none"]
    assert written[0]["results"]["my_own_text"]["word_perplexity,none"] == pytest.approx(expected, rel=1e-9)

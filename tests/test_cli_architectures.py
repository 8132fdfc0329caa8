"""Slow tier: each architecture the README names through the command line exactly as a user
runs it — calibrate a Hugging Face folder, export, lint --qnn, run, eval on
quantkit_wikitext — on a tiny seeded model of that family. Run with `pytest -m slow`."""

import json

import pytest

from quantkit.cli import main
from tests.conftest import ARCHITECTURE_CASES, architecture_case_model

CALIBRATE_SETTINGS = [
    "--num-sequences",
    "4",
    "--seq-len",
    "64",
    "--aimet-num-sequences",
    "1",
    "--eval-num-sequences",
    "2",
    "--eval-seq-len",
    "64",
    "--sensitivity-num-sequences",
    "1",
    "--sensitivity-seq-len",
    "32",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", ARCHITECTURE_CASES)
def test_calibrate_export_lint_run_eval(case, tmp_path, tiny_tokenizer, capsys):
    model = tmp_path / f"tiny-{case}"
    architecture_case_model(case).save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    calib, bundle, results = tmp_path / "calib", tmp_path / "bundle", tmp_path / "wikitext.json"

    transcript = []

    def command(*argv: str) -> str:
        assert main(list(argv)) == 0, argv
        printed = capsys.readouterr().out
        transcript.append(f"$ quantkit {' '.join(argv)}\n{printed}")
        return printed

    command("calibrate", "--model", str(model), "--out", str(calib), *CALIBRATE_SETTINGS)
    command("export", str(calib), "--out", str(bundle), "--chunk-size", "32")
    assert "graphs on QNN HTP, no CPU fallback" in command("lint", str(bundle), "--qnn")
    command("run", str(bundle), "--prompt", "The history of the city begins", "--max-new-tokens", "12")
    command("eval", str(bundle), "--tasks", "quantkit_wikitext", "--output", str(results))
    with capsys.disabled():  # the closing note quotes what each command printed (pytest -s)
        print("\n".join(transcript))
    metrics = json.loads(results.read_text())["results"]["quantkit_wikitext"]
    word_perplexity = next(value for key, value in metrics.items() if key.startswith("word_perplexity"))
    assert 1.0 < word_perplexity < float("inf")

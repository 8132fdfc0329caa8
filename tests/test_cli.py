import subprocess
import sys

import pytest

from quantkit.cli import build_parser, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(subcommands) == {"calibrate", "eval", "export", "lint", "lm-eval", "prepare", "profile", "regress", "report", "run"}
    for name in subcommands:
        assert name in text


def test_bad_model_is_a_one_line_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "quantkit", "calibrate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "calib")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "quantkit: error: model" in result.stderr and "is neither a built-in name" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "calib").exists() and not (tmp_path / ".calib.partial").exists()  # nothing to resume: nothing left behind


def test_bad_setting_is_refused_where_it_is_parsed_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--num-sequences", "0", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    assert "argument --num-sequences: got 0, expected a positive integer" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_settings_that_only_clash_together_are_reported_by_name(tmp_path, capsys):
    assert main(["calibrate", "--num-sequences", "2", "--out", str(tmp_path / "c")]) == 2
    assert "aimet_num_sequences: got 8, expected at most num_sequences (2)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_calibrate_cli_runs_and_prints_the_summary(tmp_path, tiny_model_folder, capsys):
    out = tmp_path / "calib"
    code = main(
        [
            "calibrate",
            "--model",
            str(tiny_model_folder),
            "--out",
            str(out),
            "--num-sequences",
            "2",
            "--seq-len",
            "32",
            "--aimet-num-sequences",
            "1",
            "--eval-num-sequences",
            "1",
            "--eval-seq-len",
            "32",
            "--sensitivity-num-sequences",
            "1",
            "--sensitivity-seq-len",
            "32",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Validation perplexity" in printed and "aimet_w8a8_per_tensor" in printed
    assert (out / "encodings.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "bundle", "--tasks", "quantkit_lastword", "--limit", "-3"], "argument --limit: got '-3', expected a positive number"),
        (["eval", "bundle", "--tasks", "quantkit_lastword", "--limit", "nan"], "argument --limit: got 'nan', expected a positive number"),
        (["eval", "bundle", "--tasks", "quantkit_lastword", "--max-length", "0"], "argument --max-length: got '0', expected a positive integer"),
        (["export", "calib", "--chunk-size", "1.5"], "argument --chunk-size: got '1.5', expected a positive integer"),
        (["export", "calib", "--soc-model", "-60"], "argument --soc-model: got '-60', expected a positive integer"),
        (["run", "bundle", "--prompt", "x", "--top-p", "1.5"], r"argument --top-p: got '1.5', expected a number in \(0, 1\]"),
        (["run", "bundle", "--prompt", "x", "--temperature", "-1"], "argument --temperature: got '-1', expected a number ≥ 0"),
        (["run", "bundle", "--prompt", "x", "--max-new-tokens", "-1"], "argument --max-new-tokens: got '-1', expected an integer ≥ 0"),
        (["calibrate", "--outlier-quantile", "2"], r"argument --outlier-quantile: got 2.0, expected a value in \(0.5, 1\)"),
        (["calibrate", "--batch-size", "four"], "argument --batch-size: got 'four', expected an integer"),
        (["calibrate", "--weight-bits", "2"], "argument --weight-bits: got '2', expected one of 4, 8, auto"),
    ],
)
def test_numeric_and_named_flags_are_checked_where_parsed_naming_the_flag(argv, message, capsys):
    import re

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and "islice" not in err


def test_a_calibrate_that_cannot_load_its_model_leaves_nothing_behind(tmp_path, capsys):
    assert main(["calibrate", "--model", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "X")]) == 2
    assert "quantkit: error: model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no X, no .X.partial

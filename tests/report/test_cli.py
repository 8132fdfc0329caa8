"""``quantkit report``: the subcommand calls write_report with its arguments."""

import pytest

from quantkit.cli import main


def test_report_subcommand_writes_the_page(tmp_path, calib_folder, accuracy_json, capsys):
    out = tmp_path / "report"
    code = main(["report", "--calib", str(calib_folder), "--accuracy", str(accuracy_json), "--prefill", str(tmp_path / "missing.json"), "--out", str(out)])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'index.html'}"
    html = (out / "index.html").read_text()
    assert '<section id="accuracy">' in html and "python benchmarks/prefill.py" in html


def test_report_subcommand_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--calib", str(tmp_path / "typo"), "--out", str(tmp_path / "report")]) == 2
    assert "quantkit: error: --calib" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--calib", "a", "--bundle", "b"])
    assert exit_info.value.code == 2

"""Slow tier: `accelerate launch` splits lm-eval's requests over two processes and gathers
them through lm-eval's own path; the metrics equal one process's."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _metrics(path: Path) -> dict:
    # bootstrap standard errors resample in gather order; the metrics themselves must agree
    return {task: {k: v for k, v in values.items() if "stderr" not in k} for task, values in json.loads(path.read_text())["results"].items()}


@pytest.mark.slow
def test_two_processes_give_the_results_of_one(tiny_bundle, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    assert accelerate.is_file() or shutil.which("accelerate")
    arguments = ["-m", "quantkit", "eval", str(tiny_bundle), "--tasks", "quantkit_lastword,quantkit_choice", "--limit", "20"]
    single = subprocess.run([sys.executable, *arguments, "--output", str(tmp_path / "one.json")], capture_output=True, text=True, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    # on a machine without GPUs accelerate starts N processes with --multi_gpu (its --cpu starts one); they talk over gloo
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    double = subprocess.run([*launch, *arguments, "--output", str(tmp_path / "two.json")], capture_output=True, text=True, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "process 1 of 2" in double.stderr  # really two processes, each with its share
    assert _metrics(tmp_path / "two.json") == _metrics(tmp_path / "one.json")

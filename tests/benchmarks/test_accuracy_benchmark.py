"""The accuracy benchmark script end to end on a tiny model (its real run is on SmolLM2)."""

import importlib.util
import json
from pathlib import Path

from quantkit.calibration import CalibrationConfig, calibrate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_benchmark_writes_every_method(tmp_path, tiny_model_folder):
    calib = tmp_path / "calib"
    calibrate(calib, CalibrationConfig(model=str(tiny_model_folder), num_sequences=4, seq_len=32, aimet_num_sequences=2, eval_num_sequences=2, eval_seq_len=32, sensitivity_num_sequences=1, sensitivity_seq_len=32), progress=False)
    out = tmp_path / "results"
    code = _load_script().main(["--model", str(tiny_model_folder), "--calib", str(calib), "--out", str(out), "--test-sequences", "2", "--test-seq-len", "32", "--alphas", "0.5,0.8"])
    assert code == 0
    result = json.loads((out / "accuracy.json").read_text())
    assert [row["method"] for row in result["rows"]] == ["fp", "naive_w8a8", "smoothquant_static", "llm_int8", "quantkit"]
    for row in result["rows"]:
        assert row["ppl"] > 1 and set(row) >= {"method", "ppl", "npu_blocks", "shadow_bytes"}
    assert result["rows"][0]["delta_ppl_percent"] == 0
    assert set(result["rows"][2]["validation_sweep"]) == {"0.5", "0.8"}
    assert "| quantkit |" in (out / "accuracy.md").read_text()

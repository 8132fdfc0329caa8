"""The prefill benchmark script end to end on a tiny model (its real run is on SmolLM2)."""

import importlib.util
import json
from pathlib import Path

from quantkit.calibration import CalibrationConfig, calibrate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prefill.py"


def test_prefill_benchmark_measures_every_configuration(tmp_path, tiny_model_folder):
    spec = importlib.util.spec_from_file_location("prefill_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calib = tmp_path / "calib"
    calibrate(
        calib,
        CalibrationConfig.preset(
            model=str(tiny_model_folder),
            num_sequences=4,
            seq_len=32,
            aimet_num_sequences=1,
            eval_num_sequences=2,
            eval_seq_len=32,
            sensitivity_num_sequences=1,
            sensitivity_seq_len=32,
        ),
        progress=False,
    )
    out = tmp_path / "results"
    assert module.main(["--model", str(tiny_model_folder), "--calib", str(calib), "--out", str(out), "--prompt-tokens", "300", "--repeats", "2"]) == 0
    result = json.loads((out / "prefill.json").read_text())
    assert result["prompt_tokens"] == 300
    assert [row["config"] for row in result["rows"]] == ["hf_fp32", "runtime_fp", "qdq_shadow_ooo", "int8_inorder", "int8_shadow_inorder", "int8_shadow_ooo"]
    rows = {row["config"]: row for row in result["rows"]}
    assert all(row["tokens_per_s"] > 0 and len(row["seconds_all"]) == 2 for row in rows.values())
    assert rows["int8_inorder"]["outlier_values"] == 0 and rows["int8_shadow_ooo"]["outlier_values"] > 0  # the planted outliers
    assert 0 <= rows["int8_shadow_ooo"]["bubble_ratio"] <= 1
    assert set(result["ratios"]) == {"int8_shadow_ooo_over_hf_fp32", "shadow_overhead_inorder", "ooo_over_inorder", "integer_over_qdq_kernels"}
    assert "int8_shadow_ooo" in (out / "prefill.md").read_text()

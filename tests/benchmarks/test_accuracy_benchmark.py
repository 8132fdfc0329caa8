"""The accuracy benchmark script end to end on a tiny model (its real run is on SmolLM2)."""

import importlib.util
import json
from pathlib import Path

import pytest

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.precision import PRECISION_FILE, PrecisionPlan
from quantkit.sensitivity.placement import PLACEMENT_FILE, PlacementPlan

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_benchmark_writes_every_method(tmp_path, tiny_model_folder):
    calib = tmp_path / "calib"
    calibrate(
        calib,
        CalibrationConfig.preset(
            model=str(tiny_model_folder),
            num_sequences=4,
            seq_len=32,
            aimet_num_sequences=2,
            eval_num_sequences=2,
            eval_seq_len=32,
            sensitivity_num_sequences=1,
            sensitivity_seq_len=32,
            activation_bits="auto",
        ),
        progress=False,
    )
    out = tmp_path / "results"
    code = _load_script().main(
        [
            "--model",
            str(tiny_model_folder),
            "--calib",
            str(calib),
            "--out",
            str(out),
            "--test-sequences",
            "2",
            "--test-seq-len",
            "32",
            "--alphas",
            "0.5,0.8",
            "--bytes-budget",
            "0.6",
        ]
    )
    assert code == 0
    result = json.loads((out / "accuracy.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == [
        "fp",
        "naive_w8a8",
        "naive_w8a16",
        "naive_w4a16",
        "smoothquant_static",
        "llm_int8",
        "quantkit_w8a16",
        "quantkit_w8a8",
        "quantkit_auto",
        "quantkit_w4a16",
        "quantkit_w4a16_block64",
        "quantkit_w4a16_block32",
        "quantkit_w4a16_block32_offsets",
        "quantkit_w4a16_block32_int4_offsets",
        "quantkit_w4a16_block32_int4_offsets_mlp",
        "quantkit_w4a16_block32_int4_offsets_60pct",
        "quantkit_w4_auto_block32",
    ]
    for row in result["rows"]:
        assert row["ppl"] > 1 and set(row) >= {"method", "ppl", "npu_blocks", "shadow_bytes", "a8_mac_share"}
    assert rows["fp"]["delta_ppl_percent"] == 0
    assert set(rows["smoothquant_static"]["validation_sweep"]) == {"0.5", "0.8"}
    # NPU MACs at A8: every activation INT8, none, or the calibrated plan's share over the NPU blocks
    shares = {method: row["a8_mac_share"] for method, row in rows.items()}
    assert shares["fp"] is None and shares["llm_int8"] is None
    assert shares["naive_w8a8"] == shares["smoothquant_static"] == shares["quantkit_w8a8"] == 1.0
    assert shares["naive_w8a16"] == shares["quantkit_w8a16"] == 0.0
    precision = PrecisionPlan.load(calib / PRECISION_FILE)
    npu = PlacementPlan.load(calib / PLACEMENT_FILE).npu_block_indices
    assert shares["quantkit_auto"] == pytest.approx(precision.a8_mac_share(npu))
    assert [row["method"] for row in result["rows"] if row.get("calibrated")] == ["quantkit_auto"]
    # the 16-bit rows are different measurements from the 8-bit ones, and on the calibrated plan
    assert rows["naive_w8a16"]["ppl"] != rows["naive_w8a8"]["ppl"]
    assert rows["quantkit_w8a16"]["ppl"] != rows["quantkit_w8a8"]["ppl"]
    if 0 < shares["quantkit_auto"] < 1:
        assert rows["quantkit_auto"]["ppl"] not in (rows["quantkit_w8a8"]["ppl"], rows["quantkit_w8a16"]["ppl"])
    # 4-bit weights: half the INT8 bytes plus scales, a different measurement from INT8; the mix keeps INT8 on its A8 graphs
    w8_bytes = rows["quantkit_w8a16"]["npu_weight_bytes"]
    for method in ("quantkit_w4a16", "quantkit_w4a16_block64", "quantkit_w4a16_block32"):
        assert rows[method]["weight_bits"] == 4 and rows[method]["a8_mac_share"] == 0.0
        assert 0.5 * w8_bytes < rows[method]["npu_weight_bytes"] < 0.6 * w8_bytes
        assert rows[method]["ppl"] != rows["quantkit_w8a16"]["ppl"]
    offsets = rows["quantkit_w4a16_block32_offsets"]  # + one int8 offset per block of 32, and its row's float32 scales
    assert offsets["weight_bits"] == 4 and offsets["npu_weight_bytes"] > rows["quantkit_w4a16_block32"]["npu_weight_bytes"]
    assert offsets["ppl"] != rows["quantkit_w4a16_block32"]["ppl"]
    int4 = rows["quantkit_w4a16_block32_int4_offsets"]  # int4 offsets: half the offset codes' bytes
    int4_mlp = rows["quantkit_w4a16_block32_int4_offsets_mlp"]  # and on gate_up and down only: fewer still
    assert rows["quantkit_w4a16_block32"]["npu_weight_bytes"] < int4_mlp["npu_weight_bytes"] < int4["npu_weight_bytes"] < offsets["npu_weight_bytes"]
    assert int4["ppl"] not in (offsets["ppl"], int4_mlp["ppl"])
    budgeted = rows["quantkit_w4a16_block32_int4_offsets_60pct"]  # offsets on some graphs, within 60% of the INT8 bytes
    assert rows["quantkit_w4a16_block32"]["npu_weight_bytes"] < budgeted["npu_weight_bytes"] <= 0.6 * w8_bytes < int4["npu_weight_bytes"]
    assert rows["naive_w4a16"]["ppl"] != rows["naive_w8a16"]["ppl"]
    assert rows["quantkit_w4_auto_block32"]["a8_mac_share"] == shares["quantkit_auto"]
    assert rows["quantkit_w4_auto_block32"]["weight_bits"] == (4 if shares["quantkit_auto"] == 0 else 8 if shares["quantkit_auto"] == 1 else "mixed")
    markdown = (out / "accuracy.md").read_text()
    assert "| NPU MACs at A8 |" in markdown and "| quantkit_auto (calibrated) |" in markdown
    assert "| naive_w8a16 | " in markdown and " | 0% | " in markdown.split("| naive_w8a16 |")[1].split("\n")[0]
    assert "exported as a bundle" in markdown and "| simulated |" in markdown
    # the quantkit rows are the bundles through the runtime; the twin is another float summation order of the same arithmetic
    for method, row in rows.items():
        if method.startswith("quantkit_"):
            assert row["ppl"] == pytest.approx(row["ppl_simulated"], rel=1e-3), method
    assert not [p.name for p in calib.parent.iterdir() if p.name.startswith(".quantkit_")]  # the variant bundles are not left behind

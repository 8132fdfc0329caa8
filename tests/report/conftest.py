"""Small synthetic report inputs: a calibration folder of 4 blocks, an accuracy and a
prefill results file shaped like the benchmarks' (the figures are made up for the tests)."""

import json

import numpy as np
import pytest

NUM_BLOCKS = 4


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


@pytest.fixture
def calib_folder(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tmp_path / "calib"
    placement = ["cpu-fp", "npu", "npu", "npu"]
    write_json(
        folder / "summary.json",
        {
            "model": "tiny-test-model",
            "validation_tokens": [2, 32],
            "calibration_tokens": [4, 32],
            "perplexity": {"fp": 10.0, "quantkit": 10.05, "aimet_w8a8_per_tensor": 30.0},
            "npu_blocks": 3,
            "num_blocks": NUM_BLOCKS,
            "resident_shadow_parameters": 1000,
            "model_parameters": 100000,
            "top_outlier_layers": [
                {"layer": "model.layers.2.mlp.down_proj", "shared_with": [], "absmax": 50.0, "clip": 0.5, "scale": 0.5 / 127, "absmax_over_scale": 12700.0, "outlier_channels": 7},
                {"layer": "model.layers.0.mlp.gate_proj", "shared_with": ["model.layers.0.mlp.up_proj"], "absmax": 8.0, "clip": 1.0, "scale": 1 / 127, "absmax_over_scale": 1016.0, "outlier_channels": 3},
            ],
            "seconds": {"load": 1.0, "statistics": 2.0, "total": 3.0},
            "peak_memory_mb": 512.0,
        },
    )
    write_json(folder / "sensitivity.json", [{"block": b, "delta_nll": [0.004, -0.001, 0.002, 0.0005][b], "kl": 0.001} for b in range(NUM_BLOCKS)])
    write_json(
        folder / "placement.json",
        {
            "placement": placement,
            "budget_relative_ppl": 0.01,
            "fp_ppl_": 10.0,
            "ppl_": 10.05,
            "evaluations_": [{"cpu_blocks": [], "ppl": 10.3}, {"cpu_blocks": [0], "ppl": 10.05}],
            "npu_blocks": 3,
            "within_budget": True,
        },
    )
    write_json(folder / "config.json", {"model": "tiny-test-model", "outlier_quantile": 0.99, "accuracy_budget": 0.01, "version": 1})
    (folder / "report").mkdir()
    plt.imsave(folder / "report" / "outlier_heatmap.png", np.random.default_rng(0).normal(size=(NUM_BLOCKS, 16)), cmap="RdBu_r")
    return folder


@pytest.fixture
def accuracy_json(tmp_path):
    rows = [
        {"method": "fp", "ppl": 10.0, "npu_blocks": 0, "shadow_bytes": 0, "delta_ppl_percent": 0.0},
        {"method": "naive_w8a8", "ppl": 40.0, "npu_blocks": 4, "shadow_bytes": 0, "delta_ppl_percent": 300.0},
        {"method": "smoothquant_static", "ppl": 10.4, "npu_blocks": 4, "shadow_bytes": 0, "alpha": 0.8, "delta_ppl_percent": 4.0},
        {"method": "llm_int8", "ppl": 10.2, "npu_blocks": None, "shadow_bytes": None, "delta_ppl_percent": 2.0},
        {"method": "quantkit", "ppl": 10.1, "npu_blocks": 3, "shadow_bytes": 2_000_000, "delta_ppl_percent": 1.0},
    ]
    return write_json(tmp_path / "results" / "accuracy.json", {"model": "tiny-test-model", "test_tokens": [2, 32], "model_bytes": 100_000_000, "num_blocks": NUM_BLOCKS, "rows": rows})


@pytest.fixture
def prefill_json(tmp_path):
    rows = [
        {"config": "hf_fp32", "tokens_per_s": 100.0},
        {"config": "runtime_fp", "tokens_per_s": 120.0, "bubble_ratio": 0.4},
        {"config": "int8_inorder", "tokens_per_s": 250.0},
        {"config": "int8_shadow_inorder", "tokens_per_s": 200.0},
        {"config": "int8_shadow_ooo", "tokens_per_s": 300.0},
    ]
    return write_json(tmp_path / "results" / "prefill.json", {"prompt_tokens": 1024, "rows": rows, "unknown_key": {"ignored": True}})

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
                {
                    "layer": "model.layers.2.mlp.down_proj",
                    "shared_with": [],
                    "absmax": 50.0,
                    "clip": 0.5,
                    "scale": 0.5 / 127,
                    "absmax_over_scale": 12700.0,
                    "outlier_channels": 7,
                },
                {
                    "layer": "model.layers.0.mlp.gate_proj",
                    "shared_with": ["model.layers.0.mlp.up_proj"],
                    "absmax": 8.0,
                    "clip": 1.0,
                    "scale": 1 / 127,
                    "absmax_over_scale": 1016.0,
                    "outlier_channels": 3,
                },
            ],
            "seconds": {"load": 1.0, "statistics": 2.0, "total": 3.0},
            "stage_peak_memory_mb": {"load": 300.0, "statistics": 512.0},
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
    return write_json(
        tmp_path / "results" / "accuracy.json",
        {"model": "tiny-test-model", "test_tokens": [2, 32], "model_bytes": 100_000_000, "num_blocks": NUM_BLOCKS, "rows": rows},
    )


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


# Per block: MACs per token of its NPU graphs (qkv, o, gate_up, down) and their Linears.
GRAPH_MACS = {"qkv": 100, "o": 50, "gate_up": 200, "down": 100}
GRAPH_LINEARS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}
A16_GRAPHS = {(2, "gate_up"), (2, "down")}  # the auto plan's promotions; block 0 is on the CPU
# A8 share of the NPU blocks 1-3: 1 - 300 / 1350; of all four blocks (the search's points): 1 - 300 / 1800
NPU_A8_SHARE = 1 - 300 / 1350


def precision_plan(mode: str = "auto"):
    """A PrecisionPlan of the 4-block calibration: auto promotes block 2's MLP graphs to A16
    (the fewest within the +1% budget of FP 10.0, as its search points say)."""
    from quantkit.precision import GraphPrecision, PrecisionPlan

    graphs = {}
    for block in range(NUM_BLOCKS):
        for kind, linears in GRAPH_LINEARS.items():
            names = [f"model.layers.{block}.{linear}" for linear in linears]
            bits = 16 if mode == "16" or (mode == "auto" and (block, kind) in A16_GRAPHS) else 8
            graphs[names[0]] = GraphPrecision(names, block, GRAPH_MACS[kind], bits)
    search = [
        {"promoted": 0, "a8_mac_share": 1.0, "ppl": 10.4},
        {"promoted": 1, "a8_mac_share": 1 - 200 / 1800, "ppl": 10.2},
        {"promoted": 2, "a8_mac_share": 1 - 300 / 1800, "ppl": 10.08},
        {"promoted": 16, "a8_mac_share": 0.0, "ppl": 10.01},
    ]
    return PrecisionPlan(mode, graphs, search_=search if mode == "auto" else [], sensitivity_={})


@pytest.fixture
def precision_calib_folder(calib_folder):
    """The calibration folder with a precision.json (auto) and the summary's A8 share."""
    precision_plan().save(calib_folder / "precision.json")
    summary = json.loads((calib_folder / "summary.json").read_text())
    summary.update(activation_bits="auto", a8_mac_share=NPU_A8_SHARE)
    write_json(calib_folder / "summary.json", summary)
    return calib_folder

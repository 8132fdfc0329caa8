"""The scale benchmark script end to end on a tiny shape (its real runs are 0.36–3 B parameters)."""

import importlib.util
import json
from pathlib import Path

from quantkit.models.loading import load_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"
TINY = {
    "model_type": "qwen2",  # q/k/v biases: a second family beside the Llama shapes
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def test_scale_benchmark_builds_calibrates_and_exports_a_shape(tmp_path, tiny_model_folder, monkeypatch):
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(module.SHAPES, "tiny-qwen2", TINY)
    flags = ["--num-sequences", "4", "--seq-len", "32", "--aimet-num-sequences", "1", "--eval-num-sequences", "2", "--eval-seq-len", "32"]
    flags += ["--sensitivity-num-sequences", "1", "--sensitivity-seq-len", "32"]
    run = module.measure("tiny-qwen2", tmp_path, flags, tokenizer_folder=tiny_model_folder)

    loaded = load_model(str(tmp_path / "tiny-qwen2" / "model"))  # the random-weight model is a real Hugging Face folder
    assert run["parameters"] == sum(p.numel() for p in loaded.model.parameters()) and loaded.layout.num_blocks == 2
    assert run["calibrate_seconds"] > 0 and run["export_seconds"] > 0
    assert run["calibrate_peak_gb"] >= max(run["stage_peak_gb"].values()) > 0  # the process's peak covers every stage's
    assert run["dominant_stage"] in run["stage_seconds"] and run["calibration_tokens"] == [4, 32]
    assert 0 < run["largest_graph_mb"] and run["bundle_gb"] > 0
    assert module.build_model("tiny-qwen2", tmp_path / "tiny-qwen2" / "model") == run["parameters"]  # built once, then reused

    out = tmp_path / "results"
    record = {"runs": [run, {**run, "shape": "twice", "parameters": 2 * run["parameters"]}]}
    table = module.write_results(record, out)
    assert json.loads((out / "scale.json").read_text())["runs"][0]["shape"] == "tiny-qwen2"
    assert "tiny-qwen2" in table and (out / "scale.md").read_text().startswith("| shape") and (out / "scale.png").stat().st_size > 0

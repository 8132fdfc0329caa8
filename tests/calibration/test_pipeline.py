"""End-to-end ``calibrate`` on a tiny saved model: files, atomic output, resume, errors."""

import json

import pytest
import torch

import quantkit.calibration.pipeline as pipeline
from quantkit.calibration import ActivationStatistics, CalibrationConfig, calibrate
from quantkit.errors import DataError, QuantkitError
from tests.conftest import PLANTED_CHANNELS


def _config(folder, **overrides):
    values = dict(
        model=str(folder),
        num_sequences=4,
        seq_len=32,
        batch_size=2,
        aimet_num_sequences=2,
        eval_num_sequences=2,
        eval_seq_len=32,
        sensitivity_num_sequences=1,
        sensitivity_seq_len=32,
    )
    values.update(overrides)
    return CalibrationConfig.preset(**values)


def test_calibrate_writes_every_artefact(tmp_path, tiny_model_folder):
    out = tmp_path / "calib"
    result = calibrate(out, _config(tiny_model_folder), progress=False)
    for name in (
        "statistics.safetensors",
        "statistics.json",
        "encodings.json",
        "shadow_plan.json",
        "sensitivity.json",
        "placement.json",
        "summary.json",
        "summary.txt",
        "config.json",
        "report/outlier_heatmap.png",
        "report/sensitivity.png",
        "report/index.html",
    ):
        assert (out / name).is_file(), name
    assert not (tmp_path / ".calib.partial").exists()
    assert not (out / "checkpoint").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["perplexity"]) == {"fp", "aimet_w8a8_per_tensor", "quantkit", "quantkit_simulated"}
    stages = set(summary["seconds"]) - {"total"}
    assert set(summary["stage_peak_memory_mb"]) == stages and "Peak memory per stage: load" in result.summary
    assert summary["peak_memory_mb"] >= max(summary["stage_peak_memory_mb"].values()) > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".bundle-check-")]  # the checked bundle is not left behind
    placement = json.loads((out / "placement.json").read_text())
    assert placement["within_budget"] and summary["perplexity"]["quantkit"] <= summary["perplexity"]["fp"] * 1.01
    assert summary["npu_blocks"] == placement["placement"].count("npu")
    mlp_input = json.loads((out / "statistics.json").read_text())["tensors"]["model.layers.0.mlp.gate_proj:input"]
    # 3 of 64 channels planted on every token: the p99.9 clip lies among them, and only
    # planted channels exceed it.
    assert mlp_input["top_outlier_channels"] and set(mlp_input["top_outlier_channels"]) <= set(PLANTED_CHANNELS)
    assert "Top 10 outlier layers" not in result.summary  # the tiny model has only 8 input sites
    assert "model.layers.0.mlp.gate_proj".removeprefix("model.") in result.summary
    assert CalibrationConfig.load(out / "config.json") == _config(tiny_model_folder)
    assert (out / "report/outlier_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_output_is_not_overwritten_by_accident(tmp_path, tiny_model_folder):
    out = tmp_path / "calib"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(QuantkitError, match="already exists; choose another --out or pass --overwrite"):
        calibrate(out, _config(tiny_model_folder), progress=False)
    assert (out / "keep.txt").read_text() == "user data"


def test_killed_calibration_resumes_to_the_same_statistics(tmp_path, tiny_model_folder, monkeypatch):
    config = _config(tiny_model_folder)
    reference = calibrate(tmp_path / "reference", config, progress=False)
    original = pipeline.collect_activation_statistics

    def killed_after_first_batch(*args, **kwargs):
        def kill(current, index):
            raise KeyboardInterrupt

        return original(*args, **kwargs, on_batch_end=kill)

    monkeypatch.setattr(pipeline, "collect_activation_statistics", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        calibrate(tmp_path / "calib", config, progress=False)
    assert (tmp_path / ".calib.partial" / "checkpoint" / "progress.json").is_file()
    assert not (tmp_path / "calib").exists()  # nothing half-written under the final name
    monkeypatch.setattr(pipeline, "collect_activation_statistics", original)
    calibrate(tmp_path / "calib", config, progress=False)
    resumed, expected = ActivationStatistics.load(tmp_path / "calib"), ActivationStatistics.load(reference.out)
    for key in expected:
        assert torch.equal(resumed[key].histogram, expected[key].histogram)
        assert torch.equal(resumed[key].channel_outlier_excess, expected[key].channel_outlier_excess)


def test_too_little_data_is_a_clear_error(tmp_path, tiny_model_folder):
    data = tmp_path / "tiny.txt"
    data.write_text("\n\n".join(f"Short paragraph {i}." for i in range(10)))
    with pytest.raises(DataError, match=r"calibration split\) has \d+ tokens, but 4 sequences × 32 tokens = 128 are needed"):
        calibrate(tmp_path / "calib", _config(tiny_model_folder, data=str(data)), progress=False)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_sequences", 0, "num_sequences: got 0, expected a positive integer"),
        ("outlier_quantile", 1.5, "outlier_quantile: got 1.5"),
        ("aimet_num_sequences", 64, "at most num_sequences"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        CalibrationConfig.preset(**{field: value})


@pytest.mark.parametrize("activation_bits, pruned", [("16", 0.5), ("8", 0.0), ("auto", 0.0)])
def test_shadow_path_is_pruned_for_16_bit_graphs_only(activation_bits, pruned):
    """An INT8 range cannot absorb a pruned layer's outliers: A8-capable plans keep every shadow site."""
    assert CalibrationConfig.preset(activation_bits=activation_bits, prune_fraction=0.5).shadow_config().prune_fraction == pruned


def test_config_rejects_bad_values_of_rotation():
    with pytest.raises(ValueError, match="rotation: got 'spin', expected one of none, hadamard"):
        CalibrationConfig.preset(rotation="spin")


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown calibration settings \['num_seqs'\]"):
        CalibrationConfig.from_dict({"num_seqs": 3})


def test_summary_perplexity_is_the_exported_bundles(tmp_path, tiny_model_folder):
    """The summary's quantkit figure is what ships: the bundle exported at the
    calibration's chunk size gives exactly that validation perplexity through the
    runtime, and one exported at another chunk size the same up to float summation order."""
    from quantkit.eval.perplexity import perplexity
    from quantkit.runtime.engine import BundleModel

    from quantkit.data.corpus import load_documents, token_sequences
    from quantkit.export import export_bundle
    from quantkit.models.loading import load_model
    from quantkit.precision import PrecisionPlan

    config = _config(tiny_model_folder, accuracy_budget=0.0, activation_bits="auto", bundle_chunk_size=16)  # the search promotes graphs, then places blocks
    result = calibrate(tmp_path / "calib", config, progress=False)
    precision = PrecisionPlan.load(result.out / "precision.json")
    summary = json.loads((result.out / "summary.json").read_text())
    assert precision.mode == "auto" and precision.search_
    assert summary["a8_mac_share"] == pytest.approx(
        precision.a8_mac_share({b for b, p in enumerate(json.loads((result.out / "placement.json").read_text())["placement"]) if p == "npu"})
    )
    assert (
        "NPU graphs at A8" in result.summary and "confirmation (other validation windows" in result.summary and "exported bundle (chunk 16)" in result.summary
    )
    # every graph at A8 is measured first; per-graph sensitivities and promotions only when its upper bound is over
    assert all(point["ppl_lower"] <= point["ppl"] <= point["ppl_upper"] for point in precision.search_)
    every_graph_a8 = precision.search_[0]
    assert every_graph_a8["promoted"] == 0 and bool(precision.sensitivity_) == (every_graph_a8["ppl_upper"] > summary["perplexity"]["fp"])
    # per-graph sensitivity only in the blocks that hold most of the all-A8 loss (an eighth of them at most, one at least)
    measured_blocks = {graph.block_index for graph in precision.graphs.values() if graph.name in precision.sensitivity_}
    assert len(measured_blocks) <= max(1, summary["num_blocks"] // 8)
    assert [s["block"] for s in json.loads((result.out / "sensitivity.json").read_text())] == list(range(summary["num_blocks"]))
    for figure in ("prediction", "confirmation"):
        assert summary[figure]["ppl_lower"] <= summary[figure]["ppl"] <= summary[figure]["ppl_upper"]
    assert summary["confirmation"]["windows"] == [config.evaluation.eval_num_sequences, config.evaluation.eval_seq_len]
    realizations = summary["quantkit_rounding_realizations"]
    assert len(realizations) == (3 if summary["a8_mac_share"] > 0 else 1)  # every graph A16: the draws agree, one is measured
    assert all(abs(v / summary["confirmation"]["fp"] - 1) < 0.2 for v in realizations)
    loaded = load_model(config.model)
    validation = token_sequences(
        loaded.tokenizer, load_documents(config.data, "validation"), config.evaluation.eval_num_sequences, config.evaluation.eval_seq_len
    )
    measured = {}
    for chunk in (16, 8):
        runtime = BundleModel(export_bundle(result.out, tmp_path / f"bundle{chunk}", chunk_size=chunk, progress=False))
        measured[chunk] = perplexity(lambda ids: runtime.prefill(ids[0])[None], validation, progress=False)
    assert measured[16] == result.perplexities["quantkit"]
    assert measured[8] == pytest.approx(result.perplexities["quantkit"], rel=1e-4)
    assert result.perplexities["quantkit_simulated"] == pytest.approx(result.perplexities["quantkit"], rel=1e-3)


def test_a_run_without_text_leaves_nothing_behind(tmp_path, tiny_model_folder):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError):
        calibrate(tmp_path / "calib", _config(tiny_model_folder, data=str(empty)), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", tiny_model_folder.name]  # no calib, no .calib.partial


def test_a_failure_before_the_first_checkpoint_removes_the_staging_folder(tmp_path, tiny_model_folder, monkeypatch):
    def fails(*args, **kwargs):
        raise QuantkitError("layer 0 produced NaN")

    monkeypatch.setattr(pipeline, "collect_activation_statistics", fails)
    with pytest.raises(QuantkitError, match="NaN"):
        calibrate(tmp_path / "calib", _config(tiny_model_folder), progress=False)
    assert not (tmp_path / ".calib.partial").exists() and not (tmp_path / "calib").exists()

"""Block offsets under a byte budget: the knapsack, and a tiny calibration with
--weight-bytes-budget."""

import json
from types import SimpleNamespace

import pytest
import torch
from quantkit.runtime.qdq import packed_weight_bytes

from quantkit.calibration import CalibrationConfig, calibrate
from quantkit.errors import QuantkitError
from quantkit.export import export_bundle
from quantkit.models.loading import load_model
from quantkit.precision import PrecisionPlan
from quantkit.precision.offset_budget import OffsetCandidate, choose_offset_graphs
from quantkit.weights import WEIGHTS_FILE, int8_weight_bytes, load_weights
from tests.conftest import tiny_calibration_config, tiny_model

BLOCK = 32


def test_graphs_are_taken_by_error_saved_per_byte_while_the_bytes_last():
    candidates = [
        OffsetCandidate("a", 10.0, 2.0, 100, 180),  # saves 8 for 80 bytes: 0.1 / byte
        OffsetCandidate("b", 10.0, 4.0, 100, 130),  # 6 for 30: 0.2 / byte
        OffsetCandidate("c", 5.0, 4.0, 100, 110),  # 1 for 10: 0.1 / byte, small
        OffsetCandidate("d", 5.0, 5.0, 100, 101),  # saves nothing
    ]
    assert choose_offset_graphs(candidates, 0) == set()
    assert choose_offset_graphs(candidates, 30) == {"b"}
    assert choose_offset_graphs(candidates, 45) == {"b", "c"}  # a does not fit after b; c still does
    assert choose_offset_graphs(candidates, 120) == {"a", "b", "c"}
    assert choose_offset_graphs(candidates, 10_000) == {"a", "b", "c"}  # never one that saves no error


def test_offsets_go_where_they_lower_the_measured_kl_most_per_byte(monkeypatch):
    """The budget ranks graphs by the KL divergence from FP measured with only that graph
    quantized, without offsets and with them (graph_sensitivity, once per form, against
    one FP reference run)."""
    from quantkit.precision import weight_bits

    kl = {"W4 without offsets": {"a": 0.5, "b": 0.9, "c": 0.2}, "W4 with offsets": {"a": 0.1, "b": 0.8, "c": 0.25}}
    measured, references = [], []

    def sensitivity(layout, plan, precision, sequences, weights, progress, graphs, label, reference):
        measured.append((label, tuple(graphs), {name: weights[name].tag for name in weights}))
        references.append(reference)
        return {site: kl[label][site] for site in graphs}

    monkeypatch.setattr(weight_bits, "graph_sensitivity", sensitivity)
    monkeypatch.setattr(weight_bits, "fp_reference", lambda layout, sequences: object())
    precision = SimpleNamespace(graphs={site: SimpleNamespace(linear_names=[f"{site}.linear"]) for site in "abc"})
    symmetric = {f"{site}.linear": SimpleNamespace(nbytes=100, tag="symmetric") for site in "abc"}
    offsets = {f"{site}.linear": SimpleNamespace(nbytes=110, tag="offsets") for site in "abc"}
    chosen = weight_bits._offsets_within_budget(None, None, precision, ["a", "b", "c"], symmetric, offsets, torch.zeros(1, 8), 25, False)
    assert set(chosen) == {"a.linear", "b.linear"}  # a saves 0.4, b 0.1 for 10 bytes each; c saves nothing
    assert all(weights == {f"{s}.linear": "symmetric" for s in "abc"} for label, _, weights in measured if label == "W4 without offsets")
    assert all(weights == {f"{s}.linear": "offsets" for s in "abc"} for label, _, weights in measured if label == "W4 with offsets")
    assert [label for label, _, _ in measured] == ["W4 without offsets", "W4 with offsets"]
    assert references[0] is references[1]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("offset-budget")
    tiny_model("llama", planted_outliers=True).save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    return root


def _config(root, budget: float) -> CalibrationConfig:
    return tiny_calibration_config(
        str(root / "model"),
        activation_bits="16",
        weight_bits="4",
        weight_block_size=BLOCK,
        weight_block_offsets="int4",
        weight_bytes_budget=budget,
    )


def _bytes(linears, offsets: str) -> int:
    return sum(packed_weight_bytes(linear.out_features, linear.in_features, 4, BLOCK, offsets) for linear in linears)


def test_a_budget_between_none_and_every_offset_gives_offsets_to_some_graphs_within_it(tiny_folder):
    layout = load_model(str(tiny_folder / "model")).layout
    names = layout.linear_names()
    linears = [layout.linear(n) for n in names]
    int8 = int8_weight_bytes(layout, names)
    budget = (_bytes(linears, "none") + _bytes(linears, "int4")) / 2 / int8  # halfway: room for about half the offsets
    calibrate(tiny_folder / "calib", _config(tiny_folder, budget), progress=False)
    weights = load_weights(tiny_folder / "calib" / WEIGHTS_FILE)
    assert sum(weights[n].nbytes for n in names) <= budget * int8
    precision = PrecisionPlan.load(tiny_folder / "calib" / "precision.json")
    with_offsets = {graph.name for graph in precision.graphs.values() if weights[graph.linear_names[0]].has_offsets}
    assert 0 < len(with_offsets) < len(precision.graphs)
    assert {graph.name for graph in precision.graphs.values() if graph.weight_block_offsets == "int4"} == with_offsets  # the plan records the choice
    summary = (tiny_folder / "calib" / "summary.txt").read_text()
    assert f"int4 block offsets on {len(with_offsets)} of them" in summary
    assert "the rest INT8" not in summary  # every graph is INT4: no rest to name
    for graph in precision.graphs.values():  # a graph's Linears share the choice
        assert len({weights[n].has_offsets for n in graph.linear_names}) == 1
    export_bundle(tiny_folder / "calib", tiny_folder / "bundle", chunk_size=16, progress=False)
    manifest = json.loads((tiny_folder / "bundle" / "manifest.json").read_text())
    assert "int4 block offsets on " in manifest["quantization"]["weights"] and "the rest symmetric" in manifest["quantization"]["weights"]
    assert manifest["quantization"]["npu_weight_bytes_vs_w8"] <= budget


def test_a_budget_below_the_symmetric_weights_is_refused_naming_the_flag(tiny_folder):
    with pytest.raises(QuantkitError, match="below the .* MB of the NPU weights without block offsets; raise --weight-bytes-budget"):
        calibrate(tiny_folder / "calib-low", _config(tiny_folder, 0.3), progress=False)
    assert not (tiny_folder / "calib-low").exists()  # nothing half-written under the final name


@pytest.mark.parametrize("changes", [{"weight_bytes_budget": 1.5}, {"weight_bytes_budget": -0.1}, {"weight_block_offsets": "none"}, {"weight_bits": "auto"}])
def test_bad_budget_settings_are_refused(tiny_folder, changes):
    values = {**_config(tiny_folder, 0.55).settings(), **changes}
    with pytest.raises(ValueError, match="weight_bytes_budget"):
        CalibrationConfig.preset(**values)

"""CalibrationConfig: sections, one versioned structure, version 1's flat config.json, recipes."""

import json

import pytest

from quantkit.calibration.config import CONFIG_VERSION, SECTIONS, CalibrationConfig, OutlierConfig, StatisticsConfig, WeightConfig, load_recipe
from quantkit.cli import _calibration_config, build_parser, main
from quantkit.errors import ConfigError, QuantkitError

# A config.json as calibrate wrote it before the sections (version 1), w8a16 preset.
FLAT_V1 = {
    "precision": "w8a16",
    "model": "smollm2-135m",
    "data": "enwiki",
    "num_sequences": 16,
    "seq_len": 256,
    "batch_size": 2,
    "outlier_quantile": 0.995,
    "aimet_num_sequences": 4,
    "aimet_config": "default",
    "eval_num_sequences": 8,
    "eval_seq_len": 512,
    "scale_rule": "paper",
    "k": 2.0,
    "hot_coverage": 0.8,
    "max_resident_fraction": 0.02,
    "prune_fraction": 0.5,
    "pruned_scale_rule": "max",
    "weight_scale_rule": "mse",
    "max_output_channels": 4,
    "output_outlier_ratio": 2.0,
    "accuracy_budget": 0.01,
    "activation_bits": "16",
    "weight_bits": "8",
    "weight_block_size": 32,
    "weight_rounding": "gptq",
    "weight_block_offsets": "none",
    "weight_block_offset_graphs": "qkv,o,gate_up,down",
    "weight_bytes_budget": 0.0,
    "sensitivity_num_sequences": 4,
    "sensitivity_seq_len": 256,
    "sink_tokens": 0,
    "rotation": "none",
    "search_realizations": 3,
    "bundle_chunk_size": 256,
    "device": "cpu",
    "version": 1,
}


def test_a_config_round_trips_through_one_versioned_structure(tmp_path):
    config = CalibrationConfig.preset("w4a16", num_sequences=16, rotation="hadamard")
    values = config.to_dict()
    assert values["version"] == CONFIG_VERSION == 2
    assert set(values) == {"precision", "model", "data", "rotation", "device", "version", *SECTIONS}
    assert values["statistics"] == {"num_sequences": 16, "seq_len": 512, "batch_size": 4}
    assert values["weights"]["weight_bits"] == "4" and values["search"]["accuracy_budget"] == 0.005
    config.save(tmp_path / "config.json")
    assert CalibrationConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text()) == values


def test_a_flat_version_1_config_json_still_loads():
    config = CalibrationConfig.from_dict(FLAT_V1)
    assert config.precision == "w8a16" and config.statistics == StatisticsConfig(num_sequences=16, seq_len=256, batch_size=2)
    assert config.outliers.outlier_quantile == 0.995 and config.aimet.aimet_num_sequences == 4 and config.search.activation_bits == "16"
    assert config.settings() == {k: v for k, v in FLAT_V1.items() if k != "version"}  # every setting kept, nothing added
    # written before sink rows existed: calibrated without them, whatever the default is now
    without_sink = {k: v for k, v in FLAT_V1.items() if k != "sink_tokens"}
    assert CalibrationConfig.from_dict(without_sink).outliers.sink_tokens == 0
    assert CalibrationConfig.from_dict({**FLAT_V1, "sink_tokens": 1}).outliers.sink_tokens == 1


def test_unknown_names_are_refused_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown calibration settings \['num_seqs'\]; valid ones are \[.*'num_sequences'"):
        CalibrationConfig.from_dict({"num_seqs": 3})
    nested = CalibrationConfig().to_dict()
    nested["weights"]["bits"] = 4
    with pytest.raises(ConfigError, match=r"unknown weights settings \['bits'\]; valid ones are \['weight_bits', 'weight_block_offset_graphs'"):
        CalibrationConfig.from_dict(nested)
    with pytest.raises(ConfigError, match=r"unknown calibration settings \['shadow'\]; valid ones are \['aimet', 'data', 'device', 'evaluation'"):
        CalibrationConfig.from_dict({"version": 2, "shadow": {}})
    with pytest.raises(ConfigError, match="version: got 3, expected 1 or 2"):
        CalibrationConfig.from_dict({"version": 3})


@pytest.mark.parametrize(
    "section, values, message",
    [
        (StatisticsConfig, {"seq_len": 1}, "seq_len: got 1, expected an integer ≥ 2 .tokens per sequence."),
        (StatisticsConfig, {"batch_size": 2.5}, "batch_size: got 2.5, expected a positive integer"),
        (OutlierConfig, {"k": 0.5}, r"k: got 0.5, expected ≥ 1"),
        (OutlierConfig, {"scale_rule": "max"}, "scale_rule: got 'max', expected one of paper, mse"),
        (WeightConfig, {"weight_block_size": 20}, "weight_block_size: got 20, expected 0 .per output channel. or a multiple of 16"),
        (
            WeightConfig,
            {"weight_block_offset_graphs": "qkv,ffn"},
            "weight_block_offset_graphs: got 'qkv,ffn', expected a comma-separated list of graph kinds from qkv, o, gate_up, down",
        ),
        (WeightConfig, {"weight_block_offsets": "int4"}, "block offsets belong to 4-bit LPBQ weights"),
    ],
)
def test_each_section_rejects_bad_values_saying_what_it_expected(section, values, message):
    with pytest.raises(ConfigError, match=message):
        section(**values)


def test_checks_across_sections():
    with pytest.raises(ConfigError, match=r"aimet_num_sequences: got 8, expected at most num_sequences \(4\)"):
        CalibrationConfig.preset(num_sequences=4)
    with pytest.raises(ConfigError, match="the HTP runs 4-bit weights only with 16-bit activations"):
        CalibrationConfig.preset(weight_bits="4", activation_bits="8")
    with pytest.raises(ConfigError, match="statistics: got 3, expected a StatisticsConfig"):
        CalibrationConfig(statistics=3)


def _write(path, text):
    path.write_text(text)
    return path


def test_a_yaml_recipe_is_read_by_section_with_yaml_numbers_as_the_settings_types(tmp_path):
    recipe = _write(
        tmp_path / "r.yaml", "precision: w4a16\nmodel: tiny\nstatistics:\n  num_sequences: 16\nsearch:\n  accuracy_budget: 0\nweights:\n  weight_bits: 4\n"
    )
    assert load_recipe(recipe) == {"precision": "w4a16", "model": "tiny", "num_sequences": 16, "accuracy_budget": 0.0, "weight_bits": "4"}
    assert isinstance(load_recipe(recipe)["accuracy_budget"], float)


def test_calibrate_recipe_with_flags_and_precision_beside_it(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "precision: w4a16\nmodel: tiny\nstatistics: {num_sequences: 16}\nsearch: {accuracy_budget: 0.02}\n")
    parser = build_parser()
    config = _calibration_config(parser.parse_args(["calibrate", "--recipe", str(recipe)]))
    assert config == CalibrationConfig.preset("w4a16", model="tiny", num_sequences=16, accuracy_budget=0.02)
    # a flag overrides the recipe; the rest of the recipe stays
    config = _calibration_config(parser.parse_args(["calibrate", "--recipe", str(recipe), "--num-sequences", "24"]))
    assert config.statistics.num_sequences == 24 and config.search.accuracy_budget == 0.02 and config.model == "tiny"
    # --precision picks the preset the recipe's settings apply to
    config = _calibration_config(parser.parse_args(["calibrate", "--recipe", str(recipe), "--precision", "w8a16"]))
    assert config.precision == "w8a16" and config.weights.weight_bits == "8" and config.search.activation_bits == "16" and config.search.accuracy_budget == 0.02


def test_a_saved_config_json_is_a_recipe(tmp_path):
    saved = CalibrationConfig.preset("w8a16", num_sequences=12, sink_tokens=2)
    saved.save(tmp_path / "config.json")
    assert _calibration_config(build_parser().parse_args(["calibrate", "--recipe", str(tmp_path / "config.json")])) == saved


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.yaml", "statistics:\n  num_seqs: 3\n", r"unknown statistics settings \['num_seqs'\]; valid ones are \['batch_size', 'num_sequences', 'seq_len'\]"),
        ("r.json", '{"version": 2, "outlier": {}}', r"unknown settings in --recipe .*r.json: \['outlier'\]; valid ones are .*'outliers'"),
        ("r.yaml", "search: 0.01\n", "search: got 0.01, expected a mapping of settings"),
        ("r.yaml", "- a\n- b\n", "got list, expected a mapping of settings"),
        ("r.yaml", "statistics: {num_sequences: 0}\n", "num_sequences: got 0, expected a positive integer"),
        ("r.toml", "a = 1\n", r"got a .toml file, expected .yaml, .yml or .json"),
        ("r.json", "{not json", r"--recipe .*r.json: not readable"),
    ],
)
def test_a_bad_recipe_is_a_one_line_error(tmp_path, capsys, name, text, message):
    recipe = _write(tmp_path / name, text)
    assert main(["calibrate", "--recipe", str(recipe), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantkit: error: ") and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.partial").exists()


def test_a_missing_recipe_names_the_file(tmp_path):
    with pytest.raises(QuantkitError, match=r"--recipe .*nope.yaml: no such file"):
        load_recipe(tmp_path / "nope.yaml")

"""Precision presets: the default config is the default preset, flags override a preset."""

import pytest

from quantkit.calibration.config import CalibrationConfig
from quantkit.calibration.presets import DEFAULT_PRESET, PRESETS
from quantkit.cli import build_parser


def test_the_default_config_is_the_default_preset():
    assert CalibrationConfig() == CalibrationConfig.preset(DEFAULT_PRESET)
    assert CalibrationConfig().search.activation_bits == "auto" and CalibrationConfig().outliers.sink_tokens == 1


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_a_valid_config_that_round_trips(name, tmp_path):
    config = CalibrationConfig.preset(name)
    assert config.precision == name and all(config.settings()[key] == value for key, value in PRESETS[name].items())
    config.save(tmp_path / "config.json")
    assert CalibrationConfig.load(tmp_path / "config.json") == config


def test_a_flag_overrides_one_setting_of_the_preset():
    parser = build_parser()
    args = parser.parse_args(["calibrate", "--precision", "w4a16", "--accuracy-budget", "0.02"])
    from quantkit.cli import _calibration_config

    config = _calibration_config(args)
    assert (
        config.precision == "w4a16"
        and config.search.accuracy_budget == 0.02
        and config.weights.weight_bits == "4"
        and config.weights.weight_bytes_budget == 0.55
    )
    assert _calibration_config(parser.parse_args(["calibrate"])) == CalibrationConfig()


def test_unknown_presets_and_old_configs():
    with pytest.raises(ValueError, match="precision: got 'w2a2', expected one of w8a8-mixed, w8a16, w4a16"):
        CalibrationConfig.preset("w2a2")
    old = {k: v for k, v in CalibrationConfig.preset("w8a16").settings().items() if k not in ("sink_tokens", "precision")}
    assert CalibrationConfig.from_dict({**old, "version": 1}).outliers.sink_tokens == 0  # calibrated before sink rows existed

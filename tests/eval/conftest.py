"""A tiny bundle shared by the eval tests (built once per pytest run, a few seconds)."""

import pytest

from tests.conftest import tiny_model

CHUNK = 16


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_tokenizer):
    from quantkit.calibration import CalibrationConfig, calibrate
    from quantkit.export import export_bundle

    root = tmp_path_factory.mktemp("eval-bundle")
    folder = root / "model"
    tiny_model("llama", planted_outliers=True).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    config = CalibrationConfig.preset(
        model=str(folder),
        num_sequences=4,
        seq_len=64,
        aimet_num_sequences=1,
        eval_num_sequences=2,
        eval_seq_len=64,
        sensitivity_num_sequences=1,
        sensitivity_seq_len=32,
    )
    calibrate(root / "calib", config, progress=False)
    return export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, progress=False)

"""A tiny bundle shared by the eval tests (built once per pytest run, a few seconds)."""

import pytest

from tests.conftest import tiny_calibration_config, tiny_model

CHUNK = 16


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_tokenizer):
    from quantkit.calibration import calibrate
    from quantkit.export import export_bundle

    root = tmp_path_factory.mktemp("eval-bundle")
    folder = root / "model"
    tiny_model("llama", planted_outliers=True).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    config = tiny_calibration_config(str(folder))
    calibrate(root / "calib", config, progress=False)
    return export_bundle(root / "calib", root / "bundle", chunk_size=CHUNK, progress=False)

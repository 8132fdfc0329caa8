"""``--data`` with a ``datasets`` dataset (a local folder here; hub names work the same
way where the hub is reachable)."""

import json

import pytest

from quantkit.data.corpus import load_documents
from quantkit.errors import DataError


def test_dataset_folder_with_native_splits(tmp_path):
    for split, prefix in (("train", "calib"), ("validation", "val"), ("test", "held-out")):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": f"{prefix} document {i}"}) for i in range(5)))
    assert load_documents(str(tmp_path), "calibration") == [f"calib document {i}" for i in range(5)]
    assert load_documents(str(tmp_path), "validation")[0] == "val document 0"
    assert load_documents(str(tmp_path), "test")[-1] == "held-out document 4"


def test_dataset_without_text_column_is_a_clear_error(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"value": 3}))
    with pytest.raises(DataError, match="has no text column"):
        load_documents(str(tmp_path), "calibration")


def test_unloadable_dataset_names_the_source(tmp_path):
    with pytest.raises(DataError, match=r"--data '.*nothing-here': datasets could not load it"):
        load_documents(str(tmp_path / "nothing-here"), "calibration")

import pytest
import torch

from quantkit.errors import ModelLoadError
from quantkit.models.builtin import builtin_gguf_path
from quantkit.models.loading import load_model, prepare_model_folder, resolve_device


def test_hf_folder_loads_with_layout_and_hash(tiny_model_folder):
    loaded = load_model(str(tiny_model_folder))
    assert loaded.layout.num_blocks == 2
    assert len(loaded.source_sha256) == 64
    assert loaded.tokenizer.eos_token == "<eos>"


def test_missing_path_names_the_choices(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a built-in name .*smollm2-135m"):
        prepare_model_folder(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        prepare_model_folder(str(tmp_path))


def test_malformed_config_names_the_file(tiny_model_folder):
    (tiny_model_folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: not valid JSON"):
        prepare_model_folder(str(tiny_model_folder))


def test_folder_without_weights(tiny_model_folder):
    for path in tiny_model_folder.glob("*.safetensors"):
        path.unlink()
    with pytest.raises(ModelLoadError, match="no weight files"):
        prepare_model_folder(str(tiny_model_folder))


def test_truncated_safetensors_names_the_file(tiny_model_folder):
    weights = next(tiny_model_folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=rf"{weights.name}: unreadable safetensors file"):
        prepare_model_folder(str(tiny_model_folder))


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="must be a .gguf file"):
        prepare_model_folder(str(path))


def test_file_with_wrong_magic_is_not_gguf(tmp_path, isolated_cache):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        prepare_model_folder(str(path))


def test_truncated_gguf_is_reported_and_nothing_is_cached(tmp_path, isolated_cache):
    source = builtin_gguf_path("smollm2-135m")
    truncated = tmp_path / "SmolLM2-truncated.gguf"
    with open(source, "rb") as handle:
        truncated.write_bytes(handle.read(2_000_000))
    with pytest.raises(ModelLoadError, match="truncated or corrupt GGUF"):
        prepare_model_folder(str(truncated))
    assert not any(isolated_cache.glob("models/*/config.json"))


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        resolve_device("cuda")

"""Turn ``--model`` (a Hugging Face folder, a ``.gguf`` file or a built-in name) into a
float model and its tokenizer, with errors that name the bad file.

A GGUF file is converted once into a plain Hugging Face folder under the quantkit cache
(keyed by the file's sha256), because loading GGUF dequantizes every tensor (about 45 s
for SmolLM2-135M on 2 cores) while reloading the folder takes a fraction of that.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit.cache import atomic_directory, cache_dir
from quantkit.errors import ModelLoadError
from quantkit.hashing import file_sha256
from quantkit.models.architecture import DecoderLayout, find_decoder_layout
from quantkit.models.builtin import BUILTIN_MODELS, builtin_gguf_path
from quantkit.models.description import describe_architecture
from quantkit.runtime.architecture import ArchitectureDescription
from quantkit.transforms.rotation import ROTATIONS, ResidualRotation, rotate_residual_stream

__all__ = ["LoadedModel", "prepare_model_folder", "load_model", "file_sha256", "resolve_device"]

log = logging.getLogger(__name__)
_GGUF_MAGIC = b"GGUF"
_SOURCE_RECORD = "quantkit_source.json"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    layout: DecoderLayout
    architecture: ArchitectureDescription  # what the runtime will execute, checked against the model
    model_id: str  # what the user passed (built-in name or path)
    source_sha256: str  # of the GGUF file, or of the folder's weight files
    folder: Path  # the Hugging Face folder actually loaded
    rotation: ResidualRotation | None = None  # the offline rotation fused into the weights, if any


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for but torch sees no CUDA GPU here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"--device {device!r} is not a torch device ({error}); use cpu or cuda") from None


def prepare_model_folder(model: str) -> tuple[Path, str]:
    """Return (Hugging Face folder, source sha256) for ``model``, converting GGUF if needed."""
    if model in BUILTIN_MODELS:
        return _converted_gguf_folder(builtin_gguf_path(model))
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model {model!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}) nor an existing path; "
            "pass a Hugging Face model folder, a .gguf file, or a built-in name"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path}: a model file must be a .gguf file; for other formats pass the Hugging Face folder")
        return _converted_gguf_folder(path)
    _check_hf_folder(path)
    return path, _folder_weights_sha256(path)


def load_model(model: str, device: str = "cpu", rotation: str = "none") -> LoadedModel:
    """Load ``model`` in float32 for calibration; ``rotation`` "hadamard" fuses the
    residual-stream rotation into its weights (``quantkit.transforms``) — calibration and
    export load the model the same way, so both see the same basis.

    >>> loaded = load_model("smollm2-135m")          # doctest: +SKIP
    >>> loaded.layout.num_blocks
    30
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    folder, sha = prepare_model_folder(model)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as error:  # transformers raises many types; name the folder and the cause
        raise ModelLoadError(f"{folder}: transformers could not load this model ({type(error).__name__}: {error})") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:
        raise ModelLoadError(
            f"{folder}: no usable tokenizer ({type(error).__name__}: {error}); the folder needs tokenizer.json or the tokenizer files saved by save_pretrained"
        ) from error
    hf_model.eval().to(torch_device)
    layout = find_decoder_layout(hf_model)
    record = None
    if rotation != "none":
        if rotation not in ROTATIONS:
            raise ModelLoadError(f"--rotation: got {rotation!r}, expected one of {', '.join(ROTATIONS)}")
        record = rotate_residual_stream(layout, describe_architecture(layout, check=False))
    architecture = describe_architecture(layout)  # refuses a block the runtime could not execute, now rather than after calibration
    return LoadedModel(
        model=hf_model, tokenizer=tokenizer, layout=layout, architecture=architecture, model_id=model, source_sha256=sha, folder=folder, rotation=record
    )


def _check_hf_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{folder}: no config.json; a Hugging Face model folder needs config.json and weights")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{config}: not valid JSON ({error}); the file is corrupt or truncated") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("pytorch_model*.bin")):
        raise ModelLoadError(f"{folder}: no weight files (*.safetensors or pytorch_model*.bin)")
    for path in weights:
        _check_safetensors_file(path)


def _check_safetensors_file(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if keys:  # touch the last tensor: a truncated file fails here
                handle.get_slice(keys[-1])
    except Exception as error:
        raise ModelLoadError(f"{path}: unreadable safetensors file ({error}); it is truncated or corrupt — copy it again") from None


def _folder_weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _check_gguf_file(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        for tensor in reader.tensors:  # every tensor's data must lie inside the file
            if tensor.data_offset + tensor.n_bytes > path.stat().st_size:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
    except Exception as error:
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF file ({error}); download it again") from None


def _converted_gguf_folder(gguf_path: Path) -> tuple[Path, str]:
    if not gguf_path.is_file():
        raise ModelLoadError(f"{gguf_path}: no such GGUF file")
    sha = file_sha256(gguf_path)
    folder = cache_dir("models", f"{gguf_path.stem}-{sha[:16]}")
    record = folder / _SOURCE_RECORD
    if record.is_file():
        return folder, sha
    _check_gguf_file(gguf_path)
    log.info("converting %s to a Hugging Face folder in %s (once)", gguf_path.name, folder)
    with atomic_directory(folder) as staging:
        _convert_gguf(gguf_path, staging)
        (staging / _SOURCE_RECORD).write_text(json.dumps({"gguf": gguf_path.name, "sha256": sha}, indent=2))
    return folder, sha


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as error:
        raise ModelLoadError(f"{gguf_path}: transformers could not read this GGUF model ({type(error).__name__}: {error})") from error
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)

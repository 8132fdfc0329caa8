"""The deployment bundle on disk: manifest, integrity checks, loading.

This is the contract between calibration and runtime (see docs/bundle-format.md): the runtime reads
only what is described here. Every file of the bundle is listed in ``manifest.json``
with its sha256; a bundle whose format, version or hashes do not check out is refused.
No pickle anywhere: JSON, ONNX and safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.hashing import file_sha256

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MANIFEST_FILE",
    "DEFAULT_CHUNK_SIZE",
    "GRAPH_KINDS",
    "BundleError",
    "file_sha256",
    "bundle_problems",
    "load_manifest",
    "graph_kind",
    "graph_name",
]

BUNDLE_FORMAT = "quantkit-bundle"
BUNDLE_VERSION = 3  # 2: cold shadow columns stored channel-major; 3: the architecture description (architecture.py)
MANIFEST_FILE = "manifest.json"
DEFAULT_CHUNK_SIZE = 256  # tokens per prefill chunk (the graphs' static shape) unless the export is told otherwise
# The NPU graph kinds of a block, by the first Linear of the activation they read.
GRAPH_KINDS = {"q_proj": "qkv", "qkv_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up", "gate_up_proj": "gate_up", "down_proj": "down"}


def graph_kind(first_linear: str) -> str:
    """qkv | o | gate_up | down for the first Linear of a site, e.g. "model.layers.3.mlp.gate_proj"."""
    return GRAPH_KINDS[first_linear.rsplit(".", 1)[-1]]


def graph_name(block_index: int, first_linear: str) -> str:
    """The graph's name in the bundle, e.g. "block03.gate_up"."""
    return f"block{block_index:02d}.{graph_kind(first_linear)}"


class BundleError(QuantkitError):
    """A bundle is missing, damaged, foreign or of an unsupported version."""


def bundle_problems(folder: Path) -> tuple[dict | None, list[str]]:
    """(manifest or None, every integrity problem found): format, version, hashes, files."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        return None, [f"{folder}: no such bundle folder"]
    if not manifest_path.is_file():
        return None, [f"{folder}: no {MANIFEST_FILE}; not a quantkit bundle (make one with `quantkit export`)"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, [f"{manifest_path}: not valid JSON ({error}); the bundle is damaged — export it again"]
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return None, [
            f"{manifest_path}: not a quantkit bundle manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {BUNDLE_FORMAT!r})"
        ]
    if manifest.get("version") != BUNDLE_VERSION:
        return None, [
            f"{manifest_path}: bundle format version {manifest.get('version')!r}; this quantkit reads version {BUNDLE_VERSION} — export the bundle again with this quantkit"
        ]
    problems = []
    files = manifest.get("files", {})
    for relative, expected in sorted(files.items()):
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: listed in the manifest but missing")
        elif file_sha256(path) != expected:
            problems.append(f"{relative}: sha256 differs from the manifest; the file was changed or damaged")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST_FILE and relative not in files:
            problems.append(f"{relative}: present but not listed in the manifest")
    return manifest, problems


def load_manifest(folder: Path) -> dict:
    """The manifest of a verified bundle; raises BundleError naming every problem."""
    manifest, problems = bundle_problems(folder)
    if problems:
        raise BundleError(f"refusing bundle {folder}:\n  " + "\n  ".join(problems))
    return manifest

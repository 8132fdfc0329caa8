"""The naive W8A8 baseline with AIMET: QuantizationSimModel, encodings, 1.0.0 export.

AIMET's default config (``"default"`` = ``default_config_per_channel.json``) is exactly
the naive scheme the paper starts from: weights INT8 symmetric per channel, every op's
output (and the model input) INT8 per tensor, min/max calibration. It is what a user
gets from AIMET without outlier handling; quantkit's own scheme must beat it.

Export: ``QuantizationSimModel.export`` goes through a TorchScript ONNX export of the
whole model, which fails on transformers 5 decoders (``aten::diff`` in the attention
mask code has no ONNX symbolic). quantkit therefore writes the encodings file itself,
from each AIMET quantizer's own ``get_encodings().to_qnn_encoding_dict("1.0.0")`` —
AIMET's own serialisation of each entry — naming tensors after the torch modules:
``<module>.<param>`` for weights, ``<module>.input.<i>`` / ``<module>.output.<i>`` for
activations. The NPU graphs quantkit exports use the same names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from quantkit.runtime.qdq import ACTIVATION_BITS

__all__ = [
    "LogitsModel",
    "build_quantsim",
    "build_w8a8_quantsim",
    "compute_w8a8_encodings",
    "quantsim_encodings_1_0_0",
    "write_encodings",
    "save_quantizer_state",
    "load_quantizer_state",
    "ENCODINGS_FILE",
    "QUANTIZER_STATE_FILE",
]

ENCODINGS_FILE = "encodings.json"
# AIMET's own lossless checkpoint of a calibrated sim (quantizer_state_dict), so the
# baseline can be rebuilt without running compute_encodings again.
QUANTIZER_STATE_FILE = "aimet_quantizers.safetensors"


class LogitsModel(nn.Module):
    """``input_ids -> logits`` view of a Hugging Face causal LM (what QuantSim traces)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def build_quantsim(
    model: nn.Module, dummy_input_ids: torch.Tensor, config_file: str = "default", activation_bits: int = 8, weight_bits: int = 8, in_place: bool = False
):
    """A QuantizationSimModel of ``model`` (deep-copied, the FP model untouched; with
    ``in_place`` the quantizers are put into ``model`` itself, which saves a copy of its
    weights when the FP model is not needed afterwards):
    per-channel weights of ``weight_bits`` and min/max activation quantizers of
    ``activation_bits`` — W8A8 for the naive baseline, W8A16 / W4A16 for what a user gets
    from AIMET by asking for 16-bit activations (and 4-bit weights: the AI Hub-style
    w4a16). Calibrate it with :func:`compute_w8a8_encodings`."""
    if activation_bits not in ACTIVATION_BITS:
        raise ValueError(f"activation_bits: got {activation_bits!r}, expected one of {ACTIVATION_BITS}")
    if weight_bits not in (4, 8):
        raise ValueError(f"weight_bits: got {weight_bits!r}, expected 4 or 8")
    import aimet_torch.nn.transformers.models  # noqa: F401  registers AIMET's Llama/Qwen2/Gemma3/Mistral modules
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    _drop_kept_import_error()
    return QuantizationSimModel(
        LogitsModel(model),
        dummy_input=dummy_input_ids,
        quant_scheme=QuantScheme.min_max,
        default_output_bw=activation_bits,
        default_param_bw=weight_bits,
        config_file=config_file,
        in_place=in_place,
    )


def _drop_kept_import_error() -> None:
    """AIMET keeps the ImportError of its optional C++ extension (``py_libpymo.IMPORT_ERROR``)
    when it falls back to Python, and with it the traceback of the first import: every frame
    on the stack then, this module's callers included, stays alive with its locals — the
    model among them, so a calibration could never release it. The error is kept, its
    traceback dropped."""
    from aimet_torch.common import py_libpymo

    error = getattr(py_libpymo, "IMPORT_ERROR", None)
    if error is not None:
        error.__traceback__ = None


def build_w8a8_quantsim(model: nn.Module, dummy_input_ids: torch.Tensor, config_file: str = "default", in_place: bool = False):
    """The naive W8A8 baseline's QuantizationSimModel (:func:`build_quantsim` at 8 bits)."""
    return build_quantsim(model, dummy_input_ids, config_file, activation_bits=8, in_place=in_place)


def compute_w8a8_encodings(sim, sequences: torch.Tensor, batch_size: int = 1, progress: bool = True) -> None:
    """Min/max encodings of every quantizer from forward passes over ``sequences`` (of
    any sim :func:`build_quantsim` made, whatever its activation bit-width)."""
    device = next(sim.model.parameters()).device

    def forward_pass(model: nn.Module) -> None:
        for batch in tqdm(sequences.split(batch_size), desc="AIMET compute_encodings", unit="batch", disable=not progress):
            model(batch.to(device))

    sim.compute_encodings(forward_pass)


def quantsim_encodings_1_0_0(sim) -> dict:
    """AIMET encodings (format 1.0.0) of every enabled, initialised quantizer of ``sim``."""
    import aimet_torch

    prefix = "model."  # LogitsModel wraps the HF model under .model
    activation_encodings, param_encodings = [], []
    for module_name, qmodule in sim.named_qmodules():
        name = module_name.removeprefix(prefix)
        for role in ("input", "output"):
            for index, quantizer in enumerate(getattr(qmodule, f"{role}_quantizers")):
                encoding = quantizer.get_encodings() if quantizer is not None else None
                if encoding is not None:
                    activation_encodings.append({"name": f"{name}.{role}.{index}", **encoding.to_qnn_encoding_dict("1.0.0")})
        for param_name, quantizer in qmodule.param_quantizers.items():
            encoding = quantizer.get_encodings() if quantizer is not None else None
            if encoding is not None:
                param_encodings.append({"name": f"{name}.{param_name}", **encoding.to_qnn_encoding_dict("1.0.0")})
    return {
        "version": "1.0.0",
        "producer": {"package": "aimet-torch", "version": aimet_torch.__version__},
        "activation_encodings": activation_encodings,
        "param_encodings": param_encodings,
        "excluded_layers": [],
        "quantizer_args": {
            "activation_bitwidth": 8,
            "param_bitwidth": 8,
            "dtype": "int",
            "per_channel_quantization": True,
            "quant_scheme": "min_max",
        },
    }


def write_encodings(encodings: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(encodings, indent=1))


_EXTRA_SEPARATOR = "::"  # AIMET's quantizer states hold dicts of tensors (_extra_state): flattened


def save_quantizer_state(sim, path: Path) -> None:
    from safetensors.torch import save_file

    flat = {}
    for name, value in sim.quantizer_state_dict().items():
        if isinstance(value, dict):
            flat.update({f"{name}{_EXTRA_SEPARATOR}{key}": torch.as_tensor(item).detach().cpu().contiguous() for key, item in value.items()})
        else:
            flat[name] = value.detach().cpu().contiguous()
    save_file(flat, str(path))


def load_quantizer_state(sim, path: Path) -> None:
    """Load a state saved by :func:`save_quantizer_state` into a freshly built sim."""
    from safetensors.torch import load_file

    state: dict = {}
    for name, tensor in load_file(str(path)).items():
        if _EXTRA_SEPARATOR in name:
            owner, key = name.split(_EXTRA_SEPARATOR, 1)
            state.setdefault(owner, {})[key] = tensor
        else:
            state[name] = tensor
    missing = set(sim.quantizer_state_dict()) - set(state)
    if missing:
        raise ValueError(f"{path}: quantizer state lacks {len(missing)} entries (e.g. {sorted(missing)[0]}); it belongs to another model or AIMET config")
    device = next(sim.model.parameters()).device
    with torch.no_grad():
        sim.model.load_state_dict({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}, strict=False)

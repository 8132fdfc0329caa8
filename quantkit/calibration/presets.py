"""Named precision presets for ``quantkit calibrate --precision``: the recipes users know
from Qualcomm AI Hub and ExecuTorch's QNN backend, each the best measured recipe of its
kind here (``docs``/README: ``benchmarks/accuracy.py``). A preset fills the settings it
names (by setting name, whatever its section of ``CalibrationConfig``); a flag or a recipe
setting given beside it overrides that one setting.

* ``w8a8-mixed`` (the default): INT8 weights, every NPU graph's input at A8 (int8 × int8
  MACs) unless the search must promote one to A16 to stay within the accuracy budget;
  the attention-sink position runs in FP on the CPU (``ShadowConfig.sink_tokens``).
* ``w8a16``: INT8 weights, 16-bit activations everywhere (what AI Hub and ExecuTorch
  ship for small LLMs); half the inputs' shadow path pruned (a 16-bit range absorbs it).
* ``w4a16``: 4-bit LPBQ weights (blocks of 32, GPTQ) with int4 block offsets on the
  graphs that save the most KL per byte within 55% of the INT8 weight bytes, 16-bit
  activations, every block kept on the NPU (budget +0.5% for the placement).
"""

from __future__ import annotations

__all__ = ["PRESETS", "DEFAULT_PRESET"]

DEFAULT_PRESET = "w8a8-mixed"
PRESETS: dict[str, dict] = {
    "w8a8-mixed": {"activation_bits": "auto", "weight_bits": "8", "sink_tokens": 1},
    "w8a16": {"activation_bits": "16", "weight_bits": "8", "sink_tokens": 0},
    "w4a16": {
        "activation_bits": "16",
        "weight_bits": "4",
        "weight_block_offsets": "int4",
        "weight_bytes_budget": 0.55,
        "accuracy_budget": 0.005,
        "sink_tokens": 0,
    },
}

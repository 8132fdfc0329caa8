"""Settings of shadow outlier execution (arXiv 2407.05858 §3.3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quantkit.quant_primitives import WEIGHT_SCALE_RULES
from quantkit.settings import from_checked_dict

__all__ = ["ShadowConfig", "SCALE_RULES", "PRUNED_SCALE_RULES"]

SCALE_RULES = ("paper", "mse")
PRUNED_SCALE_RULES = ("max", "mse", "clip")


@dataclass(frozen=True)
class ShadowConfig:
    """How each Linear input gets its INT8 scale and its outlier handling.

    * ``scale_rule="paper"``: range from max|x| when max|x| ≤ ``k`` × p(``percentile``),
      otherwise clip at that percentile and shadow the excess. ``"mse"``: the clip point
      minimising rounding error with at most (1 - ``percentile``) of values as outliers.
    * ``hot_coverage``: hot channels = the fewest channels holding this share of the
      calibration outliers (paper: <3% of channels hold >80%).
      ``max_resident_fraction``: cap on the resident shadow weights, as a share of the
      model's parameters; when the hot sets at ``hot_coverage`` exceed it, the coverage
      is lowered (the same for every layer) until they fit, and the rest of the outlier
      columns are read on demand. 1.0 disables the cap.
    * ``prune_fraction``: share of layers, least important first (max|x| / s), whose
      outlier handling is dropped (paper default 85%). ``pruned_scale_rule``: what such a
      layer's range becomes: ``"max"`` (max|x|: nothing is clipped; the least important
      layers are those where this costs least resolution), ``"mse"`` (the
      error-minimising clip without shadow) or ``"clip"`` (keep the shadow threshold and
      drop the outliers).
    * ``weight_scale_rule``: the INT8 per-channel weight scales of the NPU graphs:
      ``"mse"`` (per row, the clip minimising rounding + clipping error; on SmolLM2 it
      lowers weight MSE ~3% and the last-word NLL gap to FP by ~13%) or ``"max"``
      (min/max, what plain PTQ does). See ``quant_primitives.weight_scales_per_channel``.
    * ``max_output_channels``, ``output_outlier_ratio``: the output-side shadow. Of each
      NPU Linear's ``max_output_channels`` largest output channels (by max |y| of the NPU
      part over calibration text), those above ``output_outlier_ratio`` × the next
      largest are computed in FP on the CPU (their NPU weight rows are zero), so the
      graph's per-tensor output range covers only the rest. 0 disables it.
    * ``sink_tokens``: the first positions of every sequence run whole on the shadow path,
      in FP on the CPU (their NPU input is zero): the attention sink. On SmolLM2 position 0
      carries the model's massive activations whatever its token (residual stream 24,926,
      block 11's down_proj input 3,065; every other position ≤ 1,150 and ≤ 101), and every
      later token attends to its keys and values. Its K/V is what PrefixQuant (arXiv
      2410.05265) keeps in FP as a fixed prefix; here it is computed in FP with the prompt,
      so any first token works. The NPU's ranges are recorded without these rows. Only
      shadowed sites can take them: a pruned site, or one with no value beyond its clip in
      calibration, has no FP columns in the bundle and runs these rows on the NPU (all 120
      of SmolLM2's default sites are shadowed). 0 disables it.
    """

    scale_rule: str = "paper"
    k: float = 2.0
    percentile: float = 0.99
    hot_coverage: float = 0.8
    max_resident_fraction: float = 0.02
    prune_fraction: float = 0.5
    pruned_scale_rule: str = "max"
    weight_scale_rule: str = "mse"
    max_output_channels: int = 4
    output_outlier_ratio: float = 2.0
    sink_tokens: int = 1

    def __post_init__(self) -> None:
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"scale_rule: got {self.scale_rule!r}, expected one of {SCALE_RULES}")
        if self.pruned_scale_rule not in PRUNED_SCALE_RULES:
            raise ValueError(f"pruned_scale_rule: got {self.pruned_scale_rule!r}, expected one of {PRUNED_SCALE_RULES}")
        if self.weight_scale_rule not in WEIGHT_SCALE_RULES:
            raise ValueError(f"weight_scale_rule: got {self.weight_scale_rule!r}, expected one of {WEIGHT_SCALE_RULES}")
        if self.k < 1.0:
            raise ValueError(f"k: got {self.k}, expected ≥ 1 (max|x| is compared with k × the percentile)")
        if not 0.5 < self.percentile < 1.0:
            raise ValueError(f"percentile: got {self.percentile}, expected a value in (0.5, 1), e.g. 0.999")
        if not 0.0 < self.hot_coverage <= 1.0:
            raise ValueError(f"hot_coverage: got {self.hot_coverage}, expected a share in (0, 1]")
        if not 0.0 <= self.max_resident_fraction <= 1.0:
            raise ValueError(f"max_resident_fraction: got {self.max_resident_fraction}, expected a share in [0, 1], e.g. 0.02")
        if not isinstance(self.max_output_channels, int) or self.max_output_channels < 0:
            raise ValueError(f"max_output_channels: got {self.max_output_channels!r}, expected an integer ≥ 0 (0 disables the output-side shadow)")
        if self.output_outlier_ratio < 1.0:
            raise ValueError(f"output_outlier_ratio: got {self.output_outlier_ratio}, expected ≥ 1 (a channel's max is compared with ratio × the next largest)")
        if not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens: got {self.sink_tokens!r}, expected an integer ≥ 0 (0 disables the FP sink rows), e.g. 1")
        if not 0.0 <= self.prune_fraction <= 1.0:
            raise ValueError(f"prune_fraction: got {self.prune_fraction}, expected a share in [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ShadowConfig:
        return from_checked_dict(cls, values, "shadow")

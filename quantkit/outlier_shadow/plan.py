"""The shadow plan: per Linear input, its clip, scale, outlier and hot channels, pruning.

Calibration-derived fields end in ``_``. The plan is JSON (``shadow_plan.json``); the
shadow weights themselves are columns of the FP weights and are cut from the model by
``resident_shadow_weights`` and ``cold_shadow_columns`` when a bundle is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from quantkit.outlier_shadow.config import ShadowConfig
from quantkit.tensor_files import PendingTensor

__all__ = ["SiteShadowPlan", "ShadowPlan", "PLAN_FILE", "PLAN_VERSION"]

PLAN_FILE = "shadow_plan.json"
PLAN_VERSION = 2  # 2: output ranges and activation bits moved to the precision plan


@dataclass
class SiteShadowPlan:
    """One activation tensor feeding ``linear_names`` (they share clip and shadow)."""

    linear_names: list[str]
    block_index: int
    num_channels: int
    absmax_: float
    threshold_: float  # INT8 clip point t; scale s = t / 127
    importance_: float  # max|x| / s of the shadowed scale (§3.3), used for pruning
    pruned: bool  # outlier handling dropped: values beyond t are clipped
    outlier_channels_: list[int] = field(default_factory=list)  # channels that exceeded t in calibration
    hot_channels_: list[int] = field(default_factory=list)  # resident FP columns (⊆ outlier_channels_)
    output_channels_: dict[str, list[int]] = field(default_factory=dict)  # per Linear: output channels computed in FP on the CPU
    # At run time an outlier may appear in any channel; the columns of the channels that
    # are not hot ("cold") are read from the bundle when one does (§3.3).

    @property
    def shadowed(self) -> bool:
        return not self.pruned and self.threshold_ < self.absmax_

    @property
    def cold_channels_(self) -> list[int]:
        hot = set(self.hot_channels_)
        return [c for c in range(self.num_channels) if c not in hot]


@dataclass
class ShadowPlan:
    config: ShadowConfig
    sites: dict[str, SiteShadowPlan]  # keyed by the first Linear of the site
    hot_coverage_: float = 0.0  # the coverage used: config.hot_coverage, or less to fit max_resident_fraction
    version: int = PLAN_VERSION

    def site_of(self, linear_name: str) -> SiteShadowPlan:
        for site in self.sites.values():
            if linear_name in site.linear_names:
                return site
        raise KeyError(f"{linear_name} has no entry in the shadow plan")

    def _shadowed_sites(self, blocks: set[int] | None):
        return [site for site in self.sites.values() if site.shadowed and (blocks is None or site.block_index in blocks)]

    def resident_shadow_parameters(self, out_features: dict[str, int], blocks: set[int] | None = None) -> int:
        """Number of FP weights kept in memory: hot columns of every shadowed Linear and the
        rows of the output-side shadow channels (of ``blocks`` only, e.g. those placed on
        the NPU; default all)."""
        hot = sum(len(site.hot_channels_) * out_features[name] for site in self._shadowed_sites(blocks) for name in site.linear_names)
        rows = sum(
            len(channels) * site.num_channels
            for site in self.sites.values()
            if blocks is None or site.block_index in blocks
            for channels in site.output_channels_.values()
        )
        return hot + rows

    def cold_shadow_parameters(self, out_features: dict[str, int], blocks: set[int] | None = None) -> int:
        return sum(len(site.cold_channels_) * out_features[name] for site in self._shadowed_sites(blocks) for name in site.linear_names)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "config": self.config.to_dict(),
            "hot_coverage_": self.hot_coverage_,
            "sites": {name: asdict(site) for name, site in self.sites.items()},
        }

    @classmethod
    def from_dict(cls, values: dict) -> ShadowPlan:
        if values.get("version") != PLAN_VERSION:
            raise ValueError(f"shadow plan version: got {values.get('version')!r}, expected {PLAN_VERSION}; recalibrate with this quantkit")
        return cls(
            # Plans written before weight_scale_rule existed were calibrated with min/max weights.
            # ... and before sink_tokens existed, with no sink rows.
            config=ShadowConfig.from_dict({"weight_scale_rule": "max", "sink_tokens": 0, **values["config"]}),
            sites={name: SiteShadowPlan(**site) for name, site in values["sites"].items()},
            hot_coverage_=values["hot_coverage_"],
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> ShadowPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def resident_shadow_weights(self, layout, blocks: set[int] | None = None) -> dict[str, torch.Tensor]:
        """FP weights the runtime keeps in memory, of ``blocks`` only (default all): the hot
        columns ``"<linear>.hot"`` W[:, hot] of every shadowed Linear, and the output-side
        rows ``"<linear>.out_rows"`` W[C, :] (+ ``"<linear>.out_bias"``) of every Linear with
        output channels."""
        weights = {}
        for site in self.sites.values():
            if blocks is not None and site.block_index not in blocks:
                continue
            for name, channels in site.output_channels_.items():  # the output-side shadow: rows W[C, :] and b[C]
                linear = layout.linear(name)
                weights[f"{name}.out_rows"] = linear.weight.detach().float().cpu()[channels].contiguous()
                if linear.bias is not None:
                    weights[f"{name}.out_bias"] = linear.bias.detach().float().cpu()[channels].contiguous()
        for site in self._shadowed_sites(blocks):
            for name in site.linear_names:
                weights[f"{name}.hot"] = layout.linear(name).weight.detach().float().cpu()[:, site.hot_channels_].contiguous()
        return weights

    def cold_shadow_columns(self, layout, blocks: set[int] | None = None) -> dict[str, PendingTensor]:
        """The cold FP columns ``"<linear>.cold"`` W[:, cold]ᵀ of every shadowed Linear (of
        ``blocks`` only; default all), stored channel-major ([channels, out]) so the runtime
        reads just the rows it needs from disk. Made one Linear at a time as they are written
        (together they are an FP32 copy of every shadowed weight)."""

        def columns(name: str, channels: list[int]):
            return lambda: layout.linear(name).weight.detach().float().cpu()[:, channels].T.contiguous()

        return {
            f"{name}.cold": PendingTensor((len(site.cold_channels_), layout.linear(name).out_features), torch.float32, columns(name, site.cold_channels_))
            for site in self._shadowed_sites(blocks)
            for name in site.linear_names
        }

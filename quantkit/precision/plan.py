"""The per-graph quantization plan: the activation and weight bit-widths of every NPU
graph (and its LPBQ block size) and the output ranges of its Linears at each bit-width, decided in calibration and only
serialised by the export (``precision.json``). The outlier data (clips, shadow channels)
stay in the shadow plan."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.runtime.bundle import graph_kind, graph_name
from quantkit.runtime.qdq import ACTIVATION_BITS, WEIGHT_BITS

__all__ = ["GraphPrecision", "PrecisionPlan", "PRECISION_FILE", "PRECISION_VERSION", "PRECISION_MODES"]

PRECISION_FILE = "precision.json"
PRECISION_VERSION = 1
PRECISION_MODES = ("auto", "8", "16")


@dataclass
class GraphPrecision:
    """One NPU graph (the Linears reading one activation)."""

    linear_names: list[str]
    block_index: int
    macs_per_token: int  # Σ in × out of its Linears
    activation_bits: int  # 8 or 16: the graph's input, and so its MACs (int8 × int8 at A8)
    output_clips_: dict[str, dict[str, float]] = field(default_factory=dict)  # Linear → {"8": clip, "16": clip}
    weight_bits: int = 8  # 4 only with 16-bit activations (the HTP refuses W4A8 graphs)
    weight_block_size: int | None = None  # LPBQ blocks of this many inputs; None: per output channel
    weight_block_offsets: str = "none"  # its LPBQ weights' block-offset format (runtime.qdq.OFFSET_FORMATS), or "none"
    means_clip_: float | None = None  # block offsets: the largest |block mean| of the quantized input (runtime.qdq)
    output_bits: int | None = None  # 8 or 16: its outputs' width (≥ activation_bits); None: activation_bits

    @property
    def kind(self) -> str:
        return graph_kind(self.linear_names[0])

    @property
    def has_block_offsets(self) -> bool:
        return self.weight_block_offsets != "none"

    @property
    def name(self) -> str:
        return graph_name(self.block_index, self.linear_names[0])

    @property
    def out_bits(self) -> int:
        """The width of the graph's outputs."""
        return self.activation_bits if self.output_bits is None else self.output_bits

    def output_clip(self, linear_name: str, bits: int | None = None) -> float:
        return self.output_clips_[linear_name][str(bits or self.out_bits)]


@dataclass
class PrecisionPlan:
    mode: str  # "auto": chosen per graph under the budget; "8" / "16": every graph
    graphs: dict[str, GraphPrecision]  # keyed by the first Linear of the site (as ShadowPlan.sites)
    search_: list[dict] = field(default_factory=list)  # the auto search's measured points: a8_mac_share, ppl
    sensitivity_: dict[str, float] = field(default_factory=dict)  # auto: KL to FP with only this graph at A8, by graph name
    weight_search_: list[dict] = field(default_factory=list)  # --weight-bits auto: w4_mac_share, ppl of each measured point
    weight_sensitivity_: dict[str, float] = field(default_factory=dict)  # KL to FP with only this graph at W4, by graph name
    version: int = PRECISION_VERSION

    def __post_init__(self) -> None:
        if self.mode not in PRECISION_MODES:
            raise ValueError(f"activation_bits: got {self.mode!r}, expected one of {', '.join(PRECISION_MODES)}")
        for graph in self.graphs.values():
            if graph.activation_bits not in ACTIVATION_BITS:
                raise ValueError(f"{graph.name}: activation_bits {graph.activation_bits}, expected one of {ACTIVATION_BITS}")
            if graph.weight_bits not in WEIGHT_BITS:
                raise ValueError(f"{graph.name}: weight_bits {graph.weight_bits}, expected one of {WEIGHT_BITS}")
            if graph.out_bits not in ACTIVATION_BITS or graph.out_bits < graph.activation_bits:
                raise ValueError(
                    f"{graph.name}: output_bits {graph.output_bits}, expected one of {ACTIVATION_BITS} and at least its activation_bits {graph.activation_bits}"
                )
            if graph.weight_bits == 4 and graph.activation_bits != 16:
                raise ValueError(
                    f"{graph.name}: 4-bit weights with {graph.activation_bits}-bit activations; the HTP runs 4-bit weights only with 16-bit activations"
                )

    def of(self, linear_name: str) -> GraphPrecision:
        for graph in self.graphs.values():
            if linear_name in graph.linear_names:
                return graph
        raise KeyError(f"{linear_name} has no entry in the precision plan")

    def with_uniform_bits(self, bits: int, output_bits: int | None = None) -> PrecisionPlan:
        """A copy with every graph's input at ``bits`` and its outputs at ``output_bits``
        (None: as wide as the input), with the output ranges calibrated for that width."""
        values = self.to_dict()
        values["mode"] = str(bits)
        for graph in values["graphs"].values():
            if bits == 8 and graph["weight_bits"] == 4:
                raise ValueError(
                    f"{graph_name(graph['block_index'], graph['linear_names'][0])} has 4-bit weights, which the HTP runs only with 16-bit activations; export it at 16 bits or recalibrate with --weight-bits 8"
                )
            graph["activation_bits"] = bits
            graph["output_bits"] = max(bits, output_bits or bits)
        return PrecisionPlan.from_dict(values)

    def weight_bits(self) -> int | str:
        """4 or 8 when every graph has it, else "mixed"."""
        bits = {g.weight_bits for g in self.graphs.values()}
        return bits.pop() if len(bits) == 1 else "mixed"

    def w4_mac_share(self, blocks: set[int] | None = None) -> float:
        """Share of the NPU Linears' MACs (∝ their weights) with 4-bit weights."""
        graphs = [g for g in self.graphs.values() if blocks is None or g.block_index in blocks]
        total = sum(g.macs_per_token for g in graphs)
        return sum(g.macs_per_token for g in graphs if g.weight_bits == 4) / total if total else 0.0

    def a8_mac_share(self, blocks: set[int] | None = None) -> float:
        """Share of the NPU Linears' MACs (of ``blocks``; default all) whose graph runs at A8."""
        graphs = [g for g in self.graphs.values() if blocks is None or g.block_index in blocks]
        total = sum(g.macs_per_token for g in graphs)
        return sum(g.macs_per_token for g in graphs if g.activation_bits == 8) / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "mode": self.mode,
            "graphs": {k: asdict(g) for k, g in self.graphs.items()},
            "search_": self.search_,
            "sensitivity_": self.sensitivity_,
            "weight_search_": self.weight_search_,
            "weight_sensitivity_": self.weight_sensitivity_,
        }

    @classmethod
    def from_dict(cls, values: dict) -> PrecisionPlan:
        if values.get("version") != PRECISION_VERSION:
            raise ValueError(f"precision plan version: got {values.get('version')!r}, expected {PRECISION_VERSION}; recalibrate with this quantkit")
        return cls(
            mode=values["mode"],
            graphs={k: GraphPrecision(**g) for k, g in values["graphs"].items()},
            search_=values.get("search_", []),
            sensitivity_=values.get("sensitivity_", {}),
            weight_search_=values.get("weight_search_", []),
            weight_sensitivity_=values.get("weight_sensitivity_", {}),
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> PrecisionPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

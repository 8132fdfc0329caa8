"""Block placement under an accuracy budget (arXiv 2407.05858 §3.4): the most sensitive
blocks move whole to the CPU in FP until the quantized model's perplexity is within the
budget of FP; the rest stay on the NPU."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.sensitivity.measure import BlockSensitivity

__all__ = ["PlacementPlan", "plan_placement", "PLACEMENT_FILE", "NPU", "CPU_FP"]

PLACEMENT_FILE = "placement.json"
NPU = "npu"
CPU_FP = "cpu-fp"


@dataclass
class PlacementPlan:
    placement: list[str]  # per block: "npu" | "cpu-fp"
    budget_relative_ppl: float
    fp_ppl_: float
    ppl_: float  # perplexity with this placement
    evaluations_: list[dict] = field(default_factory=list)  # every placement tried, in order

    @property
    def npu_blocks(self) -> int:
        return self.placement.count(NPU)

    @property
    def npu_block_indices(self) -> set[int]:
        return {block for block, where in enumerate(self.placement) if where == NPU}

    @property
    def cpu_block_indices(self) -> list[int]:
        return [block for block, where in enumerate(self.placement) if where == CPU_FP]

    @property
    def within_budget(self) -> bool:
        return self.ppl_ <= self.fp_ppl_ * (1 + self.budget_relative_ppl)

    def save(self, path: Path) -> None:
        values = asdict(self)
        values.update(npu_blocks=self.npu_blocks, within_budget=self.within_budget)
        Path(path).write_text(json.dumps(values, indent=1))

    @classmethod
    def load(cls, path: Path) -> PlacementPlan:
        values = json.loads(Path(path).read_text())
        values.pop("npu_blocks", None)
        values.pop("within_budget", None)
        return cls(**values)


def plan_placement(
    sensitivities: list[BlockSensitivity],
    evaluate: Callable[[frozenset[int]], float],
    fp_ppl: float,
    budget_relative_ppl: float = 0.01,
) -> PlacementPlan:
    """Fewest CPU-FP blocks, taken in order of sensitivity, whose measured perplexity
    ``evaluate(cpu_blocks)`` is within ``fp_ppl × (1 + budget)``.

    The additive estimate Σ ΔNLL of the blocks left on the NPU proposes a starting count;
    measurements then step it up (over budget) or down (still within budget).
    """
    if budget_relative_ppl < 0:
        raise ValueError(f"budget_relative_ppl: got {budget_relative_ppl}, expected ≥ 0 (e.g. 0.01 for ΔPPL ≤ 1%)")
    order = [s.block for s in sorted(sensitivities, key=lambda s: (-s.delta_nll, s.block))]
    limit = fp_ppl * (1 + budget_relative_ppl)
    measured: dict[int, float] = {}
    evaluations: list[dict] = []

    def measure(count: int) -> float:
        if count not in measured:
            measured[count] = evaluate(frozenset(order[:count]))
            evaluations.append({"cpu_blocks": sorted(order[:count]), "ppl": measured[count]})
        return measured[count]

    count = 0
    if measure(0) > limit:
        budget_nll = math.log(1 + budget_relative_ppl)
        remaining = sum(max(s.delta_nll, 0.0) for s in sensitivities)
        by_block = {s.block: max(s.delta_nll, 0.0) for s in sensitivities}
        count = 0
        while count < len(order) and remaining > budget_nll:
            remaining -= by_block[order[count]]
            count += 1
        count = max(count, 1)
        while count < len(order) and measure(count) > limit:
            count += 1
        while count > 1 and measure(count - 1) <= limit:
            count -= 1
    cpu = set(order[:count])
    placement = [CPU_FP if block in cpu else NPU for block in range(len(sensitivities))]
    return PlacementPlan(placement=placement, budget_relative_ppl=budget_relative_ppl, fp_ppl_=fp_ppl, ppl_=measure(count), evaluations_=evaluations)

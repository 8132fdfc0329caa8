"""Out-of-order subgraph execution on two processors (arXiv 2407.05858 §3.4).

Prefill is a DAG of subgraphs G[c, k] (chunk c, step k of the model): G[c, k] needs
G[c, k-1], and the attention step of chunk c needs the attention step of chunk c-1 in
the same block (its KV cache). Each processor — the NPU and the CPU — runs one subgraph
at a time. In-order execution runs the subgraphs one after another in program order, so
one processor idles while the other works. Out-of-order execution lets each free
processor take any ready subgraph of its own kind, choosing greedily (§3.4):

    score(g) = +Σ_{u ∈ unlocked(g)} T(u)   if g runs on the CPU
               −Σ_{u ∈ unlocked(g)} T(u)   if g runs on the NPU

where unlocked(g) are the subgraphs whose last missing dependency is g and T their
estimated duration (a running mean of measured durations per subgraph kind). Ties go to
program order. Results do not depend on the order: every data dependency is an edge.

The schedule is recorded (start/end per subgraph) for a Chrome trace and the bubble
ratio: the idle share of the critical processor (the busier one) over the makespan.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NPU", "CPU", "Subgraph", "Schedule", "DurationEstimates", "run_in_order", "run_out_of_order", "greedy_score"]

NPU, CPU = "npu", "cpu"


@dataclass(eq=False)
class Subgraph:
    """One unit of work on one processor. ``deps`` are indices into the task list."""

    name: str
    processor: str
    run: Callable[[], None]
    deps: tuple[int, ...] = ()
    kind: str = ""  # duration estimates are shared per kind (e.g. "qkv", "attention")
    args: dict = field(default_factory=dict)


@dataclass
class ScheduledRun:
    index: int
    processor: str
    start: float
    end: float


@dataclass
class Schedule:
    """What ran where and when (seconds from the start of the run)."""

    runs: list[ScheduledRun]
    tasks: Sequence[Subgraph]

    @property
    def makespan(self) -> float:
        return max((r.end for r in self.runs), default=0.0)

    def busy(self, processor: str) -> float:
        return sum(r.end - r.start for r in self.runs if r.processor == processor)

    @property
    def critical_processor(self) -> str:
        return NPU if self.busy(NPU) >= self.busy(CPU) else CPU

    @property
    def bubble_ratio(self) -> float:
        """Idle time of the critical (busier) processor over the makespan."""
        if self.makespan == 0:
            return 0.0
        return 1.0 - self.busy(self.critical_processor) / self.makespan

    def chrome_trace(self) -> dict:
        """Chrome trace-event JSON (open in chrome://tracing or Perfetto)."""
        threads = {NPU: 1, CPU: 2}
        events = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": p.upper()}} for p, tid in threads.items()]
        for run in self.runs:
            task = self.tasks[run.index]
            events.append(
                {
                    "name": task.name,
                    "cat": task.kind or task.processor,
                    "ph": "X",
                    "pid": 0,
                    "tid": threads[run.processor],
                    "ts": run.start * 1e6,
                    "dur": (run.end - run.start) * 1e6,
                    "args": task.args,
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"bubble_ratio": self.bubble_ratio, "critical_processor": self.critical_processor}}

    def write_chrome_trace(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.chrome_trace()))
        return path


class DurationEstimates:
    """Running mean of measured durations per subgraph kind (T in the greedy score)."""

    def __init__(self, default: float = 1e-3):
        self.default = default
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._mean: dict[str, float] = {}  # read for every ready subgraph at every pick: kept, not divided

    def __call__(self, task: Subgraph) -> float:
        return self._mean.get(task.kind, self.default)

    def record(self, task: Subgraph, seconds: float) -> None:
        self._sum[task.kind] = self._sum.get(task.kind, 0.0) + seconds
        self._count[task.kind] = self._count.get(task.kind, 0) + 1
        self._mean[task.kind] = self._sum[task.kind] / self._count[task.kind]


def _check(tasks: Sequence[Subgraph]) -> None:
    for index, task in enumerate(tasks):
        if task.processor not in (NPU, CPU):
            raise ValueError(f"subgraph {task.name!r}: processor {task.processor!r}, expected {NPU!r} or {CPU!r}")
        if any(not 0 <= d < index for d in task.deps):
            raise ValueError(f"subgraph {task.name!r}: dependencies {task.deps} must point to earlier subgraphs (program order)")


def run_in_order(tasks: Sequence[Subgraph], estimates: DurationEstimates | None = None) -> Schedule:
    """Program order, one subgraph at a time: the baseline of §3.4."""
    _check(tasks)
    runs, origin = [], time.perf_counter()
    for index, task in enumerate(tasks):
        start = time.perf_counter()
        task.run()
        end = time.perf_counter()
        if estimates is not None:
            estimates.record(task, end - start)
        runs.append(ScheduledRun(index, task.processor, start - origin, end - origin))
    return Schedule(runs, tasks)


def greedy_score(task: Subgraph, unlocked: Sequence[Subgraph], estimate: Callable[[Subgraph], float]) -> float:
    """§3.4's choice among ready subgraphs: CPU work that unlocks the most, NPU work that unlocks the least."""
    total = sum(estimate(u) for u in unlocked)
    return total if task.processor == CPU else -total


def run_out_of_order(tasks: Sequence[Subgraph], estimates: DurationEstimates | None = None) -> Schedule:
    """Two workers (NPU, CPU), each running one ready subgraph of its kind at a time,
    chosen by :func:`greedy_score`. An exception in a subgraph stops both workers and is
    raised here."""
    _check(tasks)
    estimates = estimates or DurationEstimates()
    dependents: list[list[int]] = [[] for _ in tasks]
    for index, task in enumerate(tasks):
        for dep in set(task.deps):
            dependents[dep].append(index)
    missing = [len(set(task.deps)) for task in tasks]
    ready = {NPU: set(), CPU: set()}
    for index, task in enumerate(tasks):
        if missing[index] == 0:
            ready[task.processor].add(index)
    lock = threading.Condition()
    runs: list[ScheduledRun] = []
    state = {"done": 0, "error": None}
    origin = time.perf_counter()

    def pick(processor: str) -> int:
        if len(ready[processor]) == 1:
            return next(iter(ready[processor]))

        def score(index: int) -> tuple[float, int]:
            unlocked = [tasks[u] for u in dependents[index] if missing[u] == 1]
            return (greedy_score(tasks[index], unlocked, estimates), -index)

        return max(ready[processor], key=score)

    def worker(processor: str) -> None:
        while True:
            with lock:
                while not ready[processor] and state["done"] < len(tasks) and state["error"] is None:
                    lock.wait()
                if state["done"] >= len(tasks) or state["error"] is not None:
                    return
                index = pick(processor)
                ready[processor].discard(index)
            start = time.perf_counter()
            try:
                tasks[index].run()
            except BaseException as error:  # handed to the caller below
                with lock:
                    state["error"] = error
                    lock.notify_all()
                return
            end = time.perf_counter()
            with lock:
                estimates.record(tasks[index], end - start)
                runs.append(ScheduledRun(index, processor, start - origin, end - origin))
                state["done"] += 1
                for u in dependents[index]:
                    missing[u] -= 1
                    if missing[u] == 0:
                        ready[tasks[u].processor].add(u)
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(p,), name=f"quantkit-{p}", daemon=True) for p in (NPU, CPU)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if state["error"] is not None:
        raise state["error"]
    runs.sort(key=lambda r: r.start)
    return Schedule(runs, tasks)

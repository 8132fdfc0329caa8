"""The two-worker subgraph scheduler: dependencies, one subgraph per processor, the greedy choice."""

import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quantkit.runtime.scheduler import CPU, NPU, DurationEstimates, Subgraph, greedy_score, run_in_order, run_out_of_order


@st.composite
def random_dags(draw):
    """Random DAGs in program order: each subgraph depends on some earlier ones, with a random duration."""
    size = draw(st.integers(1, 25))
    specs = []
    for index in range(size):
        deps = draw(st.lists(st.integers(0, index - 1), max_size=3, unique=True)) if index else []
        specs.append((draw(st.sampled_from([NPU, CPU])), tuple(deps), draw(st.floats(0, 0.002))))
    return specs


def _build(specs):
    log, lock = [], threading.Lock()

    def make(index, seconds):
        def run():
            with lock:
                log.append(("start", index, time.perf_counter()))
            time.sleep(seconds)
            with lock:
                log.append(("end", index, time.perf_counter()))

        return run

    tasks = [Subgraph(f"g{i}", processor, make(i, seconds), deps, kind=f"k{i % 3}") for i, (processor, deps, seconds) in enumerate(specs)]
    return tasks, log


def _intervals(log):
    starts = {i: t for event, i, t in log if event == "start"}
    ends = {i: t for event, i, t in log if event == "end"}
    return starts, ends


@settings(max_examples=40, deadline=None)
@given(random_dags())
def test_out_of_order_respects_dependencies_and_runs_one_subgraph_per_processor(specs):
    tasks, log = _build(specs)
    schedule = run_out_of_order(tasks)
    starts, ends = _intervals(log)
    assert sorted(starts) == list(range(len(tasks)))  # every subgraph ran exactly once
    assert sum(1 for event, *_ in log if event == "start") == len(tasks)
    for index, task in enumerate(tasks):
        assert all(ends[dep] <= starts[index] for dep in task.deps), f"{task.name} started before a dependency ended"
    for processor in (NPU, CPU):
        spans = sorted((starts[i], ends[i]) for i, t in enumerate(tasks) if t.processor == processor)
        assert all(previous_end <= start for (_, previous_end), (start, _) in zip(spans, spans[1:])), f"two {processor} subgraphs overlapped"
    assert len(schedule.runs) == len(tasks) and 0 <= schedule.bubble_ratio <= 1


@settings(max_examples=20, deadline=None)
@given(random_dags())
def test_in_order_runs_in_program_order_one_at_a_time(specs):
    tasks, log = _build(specs)
    run_in_order(tasks)
    assert [i for event, i, _ in log if event == "start"] == list(range(len(tasks)))
    starts, ends = _intervals(log)
    assert all(ends[i] <= starts[i + 1] for i in range(len(tasks) - 1))


def test_out_of_order_overlaps_independent_work_and_in_order_does_not():
    # Two chains, one per processor, no edges between them: out-of-order runs them side by side.
    tasks = []
    for i in range(4):
        tasks.append(Subgraph(f"n{i}", NPU, lambda: time.sleep(0.02), (len(tasks) - 2,) if i else ()))
        tasks.append(Subgraph(f"c{i}", CPU, lambda: time.sleep(0.02), (len(tasks) - 2,) if i else ()))
    ooo, in_order = run_out_of_order(tasks), run_in_order(tasks)

    def overlapping(schedule):
        npu = [(r.start, r.end) for r in schedule.runs if r.processor == NPU]
        cpu = [(r.start, r.end) for r in schedule.runs if r.processor == CPU]
        return any(a < d and c < b for a, b in npu for c, d in cpu)

    assert overlapping(ooo) and not overlapping(in_order)
    assert in_order.bubble_ratio > ooo.bubble_ratio


def test_greedy_score_prefers_cpu_work_that_unlocks_most_and_npu_work_that_unlocks_least():
    estimate = DurationEstimates()
    for kind, seconds in (("small", 1.0), ("large", 5.0)):
        estimate.record(Subgraph(kind, CPU, lambda: None, kind=kind), seconds)
    small, large = Subgraph("s", CPU, lambda: None, kind="small"), Subgraph("l", NPU, lambda: None, kind="large")
    cpu_task, npu_task = Subgraph("c", CPU, lambda: None), Subgraph("n", NPU, lambda: None)
    assert greedy_score(cpu_task, [small, large], estimate) == 6.0
    assert greedy_score(npu_task, [small, large], estimate) == -6.0
    assert greedy_score(cpu_task, [], estimate) == 0.0


def test_greedy_choice_picks_the_cpu_subgraph_unlocking_the_longest_work():
    order = []
    tasks = [
        Subgraph("root", NPU, lambda: None),
        Subgraph("cpu_a", CPU, lambda: order.append("cpu_a"), (0,)),  # unlocks a short NPU subgraph
        Subgraph("cpu_b", CPU, lambda: order.append("cpu_b"), (0,)),  # unlocks a long one
        Subgraph("short", NPU, lambda: None, (1,), kind="short"),
        Subgraph("long", NPU, lambda: None, (2,), kind="long"),
    ]
    estimates = DurationEstimates()
    estimates.record(tasks[3], 0.001)
    estimates.record(tasks[4], 0.1)
    run_out_of_order(tasks, estimates)
    assert order == ["cpu_b", "cpu_a"]


def test_an_error_in_a_subgraph_reaches_the_caller():
    def fail():
        raise RuntimeError("graph failed")

    tasks = [Subgraph("ok", CPU, lambda: None), Subgraph("bad", NPU, fail, (0,)), Subgraph("after", CPU, lambda: None, (1,))]
    with pytest.raises(RuntimeError, match="graph failed"):
        run_out_of_order(tasks)


def test_bad_task_lists_are_refused():
    with pytest.raises(ValueError, match="must point to earlier subgraphs"):
        run_in_order([Subgraph("a", CPU, lambda: None, (0,))])
    with pytest.raises(ValueError, match="expected 'npu' or 'cpu'"):
        run_out_of_order([Subgraph("a", "gpu", lambda: None)])


def test_chrome_trace(tmp_path):
    tasks = [Subgraph("a", NPU, lambda: time.sleep(0.01)), Subgraph("b", CPU, lambda: time.sleep(0.01), (0,))]
    schedule = run_in_order(tasks)
    trace = json.loads(schedule.write_chrome_trace(tmp_path / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in spans] == ["a", "b"] and {e["tid"] for e in spans} == {1, 2}
    assert all(e["dur"] >= 1e4 * 0.9 for e in spans)  # microseconds
    assert trace["otherData"]["bubble_ratio"] == pytest.approx(schedule.bubble_ratio)
    assert 0.4 < schedule.bubble_ratio < 0.6  # each processor idles while the other works

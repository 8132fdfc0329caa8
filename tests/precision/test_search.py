"""Per-graph activation precision: the plan, the promotion order and the budget search."""

import math

import pytest

from quantkit.precision import GraphPrecision, PrecisionPlan, promotion_order, search_activation_bits, search_weight_bits
from quantkit.precision.search import predicted_promotions, sensitive_block_graphs


def _plan(macs=(100, 100, 400, 200)) -> PrecisionPlan:
    kinds = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
    graphs = {}
    for index, mac in enumerate(macs):
        name = f"model.layers.{index // 4}.{kinds[index % 4]}"
        graphs[name] = GraphPrecision([name], index // 4, mac, 8, {name: {"8": 1.0, "16": 2.0}})
    return PrecisionPlan(mode="auto", graphs=graphs)


def test_plan_round_trips_and_measures_the_a8_share(tmp_path):
    plan = _plan()
    assert plan.a8_mac_share() == 1.0
    plan.graphs["model.layers.0.mlp.gate_proj"].activation_bits = 16
    assert plan.a8_mac_share() == pytest.approx(400 / 800)
    plan.save(tmp_path / "precision.json")
    assert PrecisionPlan.load(tmp_path / "precision.json").to_dict() == plan.to_dict()
    uniform = plan.with_uniform_bits(16)
    assert uniform.mode == "16" and uniform.a8_mac_share() == 0.0 and plan.a8_mac_share() == 0.5  # a copy
    graph = plan.graphs["model.layers.0.mlp.gate_proj"]
    assert graph.name == "block00.gate_up" and graph.output_clip(graph.linear_names[0]) == 2.0 and graph.output_clip(graph.linear_names[0], 8) == 1.0


def test_plan_refuses_bad_values():
    with pytest.raises(ValueError, match="activation_bits: got 'eight', expected one of auto, 8, 16"):
        PrecisionPlan(mode="eight", graphs={})
    plan = _plan().to_dict()
    plan["graphs"]["model.layers.0.self_attn.q_proj"]["activation_bits"] = 4
    with pytest.raises(ValueError, match="block00.qkv: activation_bits 4"):
        PrecisionPlan.from_dict(plan)
    with pytest.raises(ValueError, match="recalibrate"):
        PrecisionPlan.from_dict({**_plan().to_dict(), "version": 0})


def test_promotion_order_is_most_kl_per_mac_first():
    plan = _plan()
    names = list(plan.graphs)
    sensitivity = {names[0]: 0.1, names[1]: 0.3, names[2]: 0.8, names[3]: 0.1}  # per MAC: 1e-3, 3e-3, 2e-3, 5e-4
    assert promotion_order(plan, sensitivity) == [names[1], names[2], names[0], names[3]]


def _additive_model(plan: PrecisionPlan, cost: dict[str, float], fp: float, margin: float = 0.0):
    """Each A8 graph adds its cost; the upper bound lies ``margin`` (relative) above the estimate."""
    calls = []

    def evaluate(candidate: PrecisionPlan) -> dict:
        calls.append({n: g.activation_bits for n, g in candidate.graphs.items()})
        ppl = fp * (1 + sum(cost[n] for n, g in candidate.graphs.items() if g.activation_bits == 8))
        return {"ppl": ppl, "ppl_upper": ppl * (1 + margin)}

    return evaluate, calls


def _measured(sensitivity: dict[str, float]):
    """sensitivity as the search asks for it (a callable), counting the calls."""
    calls = []

    def measure() -> dict[str, float]:
        calls.append(1)
        return dict(sensitivity)

    return measure, calls


@pytest.mark.parametrize("budget, promoted", [(0.10, 0), (0.05, 1), (0.02, 2), (0.004, 3)])
def test_search_promotes_the_fewest_graphs_that_meet_the_budget(budget, promoted):
    plan = _plan()
    names = list(plan.graphs)
    cost = {names[0]: 0.004, names[1]: 0.03, names[2]: 0.04, names[3]: 0.001}  # A8 costs, additive
    sensitivity = dict(cost)
    evaluate, calls = _additive_model(plan, cost, 10.0)
    measure, measured = _measured(sensitivity)
    point = search_activation_bits(plan, measure, evaluate, 10.0, budget)
    assert len(calls) <= 2 + 2  # all-A8, all-A16, then bisection over 4 graphs
    order = promotion_order(plan, sensitivity)
    assert {n for n, g in plan.graphs.items() if g.activation_bits == 16} == set(order[:promoted])
    assert point["ppl"] <= 10.0 * (1 + budget) and point["ppl"] == evaluate(plan)["ppl"] and point["promoted"] == promoted
    assert [p["promoted"] for p in plan.search_] == sorted(p["promoted"] for p in plan.search_)
    # the per-graph sensitivity (a model run per graph) is measured only when every graph at A8 is over
    assert len(measured) == (promoted > 0)
    assert plan.sensitivity_ == ({plan.graphs[n].name: v for n, v in sensitivity.items()} if promoted else {})


def test_search_decides_on_the_upper_bound_not_the_estimate():
    plan = _plan()
    names = list(plan.graphs)
    cost = {names[0]: 0.004, names[1]: 0.003, names[2]: 0.002, names[3]: 0.0005}  # all-A8 estimate +0.95%
    evaluate, _ = _additive_model(plan, cost, 10.0, margin=0.004)
    measure, measured = _measured(cost)
    point = search_activation_bits(plan, measure, evaluate, 10.0, 0.01)
    assert plan.search_[0]["promoted"] == 0 and plan.search_[0]["ppl"] <= 10.1 < plan.search_[0]["ppl_upper"]  # the estimate alone would pass
    assert point["promoted"] > 0 and point["ppl_upper"] <= 10.1 and measured == [1]


def test_search_keeps_every_graph_a16_when_even_that_is_over_budget():
    plan = _plan()
    names = list(plan.graphs)

    def evaluate(candidate):
        return {"ppl": 11.0 + sum(g.activation_bits == 8 for g in candidate.graphs.values())}  # never within 1% of 10

    point = search_activation_bits(plan, lambda: dict.fromkeys(names, 0.1), evaluate, 10.0, 0.01)
    assert point["ppl"] == 11.0 and plan.a8_mac_share() == 0.0


@pytest.mark.parametrize("budget, promoted", [(0.10, 0), (0.05, 1), (0.02, 2), (0.004, 3)])
def test_weight_search_gives_int8_back_to_the_fewest_graphs_that_meet_the_budget(budget, promoted):
    plan = _plan().with_uniform_bits(16)
    names = list(plan.graphs)
    for graph in plan.graphs.values():
        graph.weight_bits, graph.weight_block_size = 4, 32
        graph.output_clips_ = {n: {"8": 1.0, "16": 4.0} for n in graph.linear_names}  # recorded with the W4 weights
    int8_clips = {name: {name: {"8": 1.0, "16": 3.0}} for name in names}
    cost = {names[0]: 0.004, names[1]: 0.03, names[2]: 0.04, names[3]: 0.001}  # W4 costs, additive

    def evaluate(candidate):
        return 10.0 * (1 + sum(cost[n] for n, g in candidate.graphs.items() if g.weight_bits == 4))

    ppl = search_weight_bits(plan, dict(cost), int8_clips, evaluate, 10.0, budget)
    order = promotion_order(plan, cost)
    back = set(order[:promoted])
    for name, graph in plan.graphs.items():
        assert (graph.weight_bits, graph.weight_block_size) == ((8, None) if name in back else (4, 32))
        assert graph.output_clip(name) == (3.0 if name in back else 4.0)  # the clips recorded with its weights
    assert ppl <= 10.0 * (1 + budget) and plan.w4_mac_share() == pytest.approx(sum(g.macs_per_token for n, g in plan.graphs.items() if n not in back) / 800)
    assert plan.weight_search_ and plan.search_ == [] and set(plan.weight_sensitivity_) == {g.name for g in plan.graphs.values()}
    assert PrecisionPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()


def test_weight_search_leaves_the_graphs_it_did_not_measure_alone():
    """With --activation-bits auto, A8 graphs keep INT8 weights and are not candidates."""
    plan = _plan().with_uniform_bits(16)
    names = list(plan.graphs)
    plan.graphs[names[1]].activation_bits = 8
    for name in (names[0], names[2], names[3]):
        plan.graphs[name].weight_bits, plan.graphs[name].weight_block_size = 4, 32
    cost = {names[0]: 0.004, names[2]: 0.04, names[3]: 0.001}  # no entry for the A8 graph

    def evaluate(candidate):
        return 10.0 * (1 + sum(cost[n] for n, g in candidate.graphs.items() if g.weight_bits == 4))

    int8_clips = {name: dict(plan.graphs[name].output_clips_) for name in cost}
    search_weight_bits(plan, dict(cost), int8_clips, evaluate, 10.0, 0.02)
    assert (plan.graphs[names[1]].activation_bits, plan.graphs[names[1]].weight_bits) == (8, 8)
    assert {n for n, g in plan.graphs.items() if g.weight_bits == 4} == {names[0], names[3]}


def test_predicted_promotions_takes_the_kl_as_shares_of_the_excess():
    plan = _plan()
    names = list(plan.graphs)
    cost = {names[0]: 0.004, names[1]: 0.03, names[2]: 0.04, names[3]: 0.001}
    order = promotion_order(plan, cost)
    every_graph_a8 = {"ppl": 10.0 * (1 + sum(cost.values())), "ppl_upper": 10.0 * (1 + sum(cost.values()))}
    # 7.5% excess: within 5% needs a third of it covered, the first in order (o_proj, 0.03 of 0.075) does;
    # within 0.05% needs more than the first three's 0.074
    assert predicted_promotions(order, cost, every_graph_a8, 10.0, 10.0 * 1.05) == 1
    assert predicted_promotions(order, cost, every_graph_a8, 10.0, 10.0 * 1.0005) == 4
    # a margin as wide as the budget: nothing short of every graph can hold it
    wide = {**every_graph_a8, "ppl_upper": every_graph_a8["ppl"] * 1.06}
    assert predicted_promotions(order, cost, wide, 10.0, 10.0 * 1.05) == 4


def test_search_from_a_good_prediction_measures_three_points():
    """All-A8, the predicted count, and its neighbour: bisection over 40 graphs would take 7 or more."""
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(40)]
    plan = PrecisionPlan(mode="auto", graphs={n: GraphPrecision([n], i, 100, 8, {n: {"8": 1.0, "16": 2.0}}) for i, n in enumerate(names)})
    cost = {n: 0.001 * (1 + (i % 7)) for i, n in enumerate(names)}  # each A8 graph's ΔNLL, additive in NLL
    calls = []

    def evaluate(candidate):
        calls.append(1)
        return {"ppl": 10.0 * math.exp(sum(cost[n] for n, g in candidate.graphs.items() if g.activation_bits == 8))}

    point = search_activation_bits(plan, lambda: dict(cost), evaluate, 10.0, 0.05)
    promoted = {n for n, g in plan.graphs.items() if g.activation_bits == 16}
    assert point["ppl"] <= 10.5 and len(calls) == 3
    cheapest_promoted = min(cost[n] for n in promoted)
    assert point["ppl"] * math.exp(cheapest_promoted) > 10.5  # one fewer would be over: the fewest


def test_search_gallops_up_when_the_prediction_is_low():
    """Graphs that cost more together than alone (+2% whenever two or more are A8): the
    additive prediction (2) is over budget; the search doubles to 4, then finds 3."""
    plan = _plan()
    names = list(plan.graphs)
    cost = {names[0]: 0.004, names[1]: 0.03, names[2]: 0.04, names[3]: 0.001}
    promoted_counts = []

    def evaluate(candidate):
        a8 = [n for n, g in candidate.graphs.items() if g.activation_bits == 8]
        promoted_counts.append(len(names) - len(a8))
        return {"ppl": 10.0 * (1 + sum(cost[n] for n in a8) + (0.02 if len(a8) > 1 else 0.0))}

    point = search_activation_bits(plan, lambda: dict(cost), evaluate, 10.0, 0.02)
    assert point["promoted"] == 3 and point["ppl"] <= 10.2
    assert promoted_counts == [0, 2, 4, 3]


def test_sensitive_block_graphs_are_the_blocks_that_hold_most_of_the_kl():
    names = [f"model.layers.{block}.{kind}" for block in range(8) for kind in ("self_attn.q_proj", "mlp.down_proj")]
    plan = PrecisionPlan(mode="auto", graphs={n: GraphPrecision([n], int(n.split(".")[2]), 100, 8, {n: {"8": 1.0, "16": 2.0}}) for n in names})
    block_kl = {0: 0.01, 1: 0.5, 2: 0.02, 3: 0.3, 4: 0.01, 5: 0.02, 6: 0.1, 7: -0.001}  # 0.959 in all (a negative KL counts as 0)
    # blocks 1 and 3 hold 0.8 of it, past 0.75; at most a quarter of the blocks (2) either way
    assert sensitive_block_graphs(plan, block_kl, max_share=0.25) == [n for n in names if n.split(".")[2] in ("1", "3")]
    assert sensitive_block_graphs(plan, block_kl, coverage=0.9, max_share=0.25) == [n for n in names if n.split(".")[2] in ("1", "3")]  # the cap
    assert sensitive_block_graphs(plan, block_kl) == [n for n in names if n.split(".")[2] == "1"]  # an eighth: one block
    assert sensitive_block_graphs(plan, block_kl, coverage=0.9, max_share=0.5) == [n for n in names if n.split(".")[2] in ("1", "3", "6")]
    assert sensitive_block_graphs(plan, dict.fromkeys(range(8), 0.0)) == [n for n in names if n.split(".")[2] == "0"]  # at least one


def test_search_promotes_unmeasured_graphs_last():
    """Graphs sensitivity() did not measure stay reachable: when the measured ones are not enough, they follow."""
    plan = _plan()
    names = list(plan.graphs)
    cost = {names[0]: 0.004, names[1]: 0.03, names[2]: 0.04, names[3]: 0.001}
    evaluate, _ = _additive_model(plan, cost, 10.0)
    point = search_activation_bits(plan, lambda: {names[1]: 0.03}, evaluate, 10.0, 0.02)  # only one graph measured
    promoted = {n for n, g in plan.graphs.items() if g.activation_bits == 16}
    assert names[1] in promoted and point["ppl"] <= 10.2 and len(promoted) >= 2
    assert set(plan.sensitivity_) == {plan.graphs[names[1]].name}  # the report shows what was measured

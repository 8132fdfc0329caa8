import math

import pytest
import torch
from quantkit.eval.perplexity import perplexity

from quantkit.calibration.collect import collect_activation_statistics
from quantkit.models.architecture import find_decoder_layout
from quantkit.outlier_shadow import ShadowConfig, build_shadow_plan, simulated_quantization
from quantkit.precision import calibrated_precision
from quantkit.sensitivity import CPU_FP, NPU, BlockSensitivity, block_sensitivity, plan_placement
from tests.conftest import TINY_VOCAB, plant_outliers, tiny_config


def test_planner_moves_most_sensitive_blocks_until_budget_holds():
    sensitivities = [BlockSensitivity(b, d, 0.0) for b, d in enumerate([0.001, 0.02, 0.0005, 0.01])]
    costs = {0: 0.001, 1: 0.02, 2: 0.0005, 3: 0.01}  # additive ΔNLL per NPU block

    def evaluate(cpu_blocks):
        return 10.0 * math.exp(sum(c for b, c in costs.items() if b not in cpu_blocks))

    plan = plan_placement(sensitivities, evaluate, fp_ppl=10.0, budget_relative_ppl=0.01)
    assert plan.placement == [NPU, CPU_FP, NPU, CPU_FP]
    assert plan.within_budget and plan.ppl_ <= 10.1
    tighter = plan_placement(sensitivities, evaluate, fp_ppl=10.0, budget_relative_ppl=0.0)
    assert tighter.placement == [CPU_FP] * 4 and tighter.ppl_ == 10.0
    generous = plan_placement(sensitivities, evaluate, fp_ppl=10.0, budget_relative_ppl=0.5)
    assert generous.placement == [NPU] * 4 and len(generous.evaluations_) == 1


def test_negative_budget_is_rejected():
    with pytest.raises(ValueError, match="budget_relative_ppl: got -0.1"):
        plan_placement([BlockSensitivity(0, 0.1, 0.0)], lambda cpu: 1.0, 1.0, -0.1)


def test_planner_honours_the_budget_on_a_tiny_model_with_planted_outliers():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama")
    config.num_hidden_layers = 4
    model = AutoModelForCausalLM.from_config(config).eval()
    plant_outliers(model, block=2, factor=60.0)
    layout = find_decoder_layout(model)
    sequences = torch.randint(0, TINY_VOCAB, (6, 64), generator=torch.Generator().manual_seed(1))
    statistics = collect_activation_statistics(layout, sequences, outlier_quantile=0.999, progress=False)
    # Shadow pruned everywhere: the block with planted outliers then suffers most.
    plan = build_shadow_plan(statistics, layout, ShadowConfig(percentile=0.999, prune_fraction=1.0, pruned_scale_rule="clip", max_output_channels=0))
    logits = lambda ids: layout.model(input_ids=ids, use_cache=False).logits  # noqa: E731
    precision = calibrated_precision(layout, plan, sequences[:2], "8")
    sensitivities = block_sensitivity(layout, plan, precision, sequences, progress=False)
    assert max(sensitivities, key=lambda s: s.delta_nll).block == 2
    assert all(s.kl >= 0 for s in sensitivities)
    # some blocks only, against a reference made once: the same figures
    from quantkit.sensitivity.measure import fp_reference

    some = block_sensitivity(layout, plan, precision, sequences, progress=False, blocks={3, 1}, reference=fp_reference(layout, sequences))
    assert some == [sensitivities[1], sensitivities[3]]
    fp = perplexity(logits, sequences, progress=False)

    def evaluate(cpu_blocks):
        with simulated_quantization(layout, plan, precision, blocks=set(range(4)) - cpu_blocks):
            return perplexity(logits, sequences, progress=False)

    all_on_npu = evaluate(frozenset())
    assert all_on_npu > fp
    budget = (all_on_npu / fp - 1) / 2  # half the damage of quantizing every block
    placement = plan_placement(sensitivities, evaluate, fp, budget)
    assert placement.placement[2] == CPU_FP, (placement, sensitivities, fp)
    assert placement.ppl_ <= fp * (1 + budget)
    assert evaluate(frozenset(b for b, p in enumerate(placement.placement) if p == CPU_FP)) == placement.ppl_

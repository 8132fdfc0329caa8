"""The confidence interval a precision decision is held to (sensitivity/realizations.py)."""

import math

import pytest
import torch

from quantkit.sensitivity.realizations import CONFIDENCE_Z, relative_ppl_interval


def test_interval_is_the_paired_mean_over_windows_plus_minus_z_standard_errors():
    fp = torch.tensor([3.0, 2.5, 3.2, 2.8], dtype=torch.float64)
    nll = torch.stack(
        [fp + torch.tensor([0.010, 0.004, 0.012, 0.006], dtype=torch.float64), fp + torch.tensor([0.012, 0.002, 0.010, 0.008], dtype=torch.float64)]
    )  # 2 realizations
    delta = [0.011, 0.003, 0.011, 0.007]  # per window, over the realizations
    mean = sum(delta) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in delta) / 3)
    estimate, low, high = relative_ppl_interval(nll, fp)
    assert estimate == pytest.approx(math.expm1(mean))
    assert low == pytest.approx(math.expm1(mean - CONFIDENCE_Z * sd / 2)) and high == pytest.approx(math.expm1(mean + CONFIDENCE_Z * sd / 2))


def test_windows_that_disagree_widen_the_interval():
    fp = torch.full((8,), 3.0)
    steady = fp + 0.01
    scattered = fp + torch.tensor([0.0, 0.02] * 4)
    _, _, steady_high = relative_ppl_interval(steady[None], fp)
    estimate, _, scattered_high = relative_ppl_interval(scattered[None], fp)
    assert steady_high == pytest.approx(math.expm1(0.01)) and scattered_high > steady_high and estimate == pytest.approx(math.expm1(0.01))

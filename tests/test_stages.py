"""StageMeter: each stage's own time and peak memory, nested stages inside their parent's."""

import sys

import pytest
import torch

from quantkit.stages import StageMeter

_MB = 2**20


def _touch(megabytes: int) -> torch.Tensor:
    return torch.ones(megabytes * _MB // 4)  # written, so resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a per-stage peak needs Linux's resettable high-water mark")
def test_each_stage_measures_its_own_peak_and_nested_stages_count_in_their_parent():
    meter = StageMeter()
    with meter.stage("outer"):
        with meter.stage("inner"):
            block = _touch(300)
            del block
        with meter.stage("small"):
            block = _touch(20)
            del block
    with meter.stage("after"):
        pass
    assert meter.peak_mb["inner"] - meter.peak_mb["small"] > 200  # the mark was reset between them
    assert meter.peak_mb["outer"] >= meter.peak_mb["inner"]
    assert meter.peak_mb["after"] < meter.peak_mb["inner"] - 200
    assert meter.run_peak_mb() >= meter.peak_mb["inner"]
    assert set(meter.seconds) == {"outer", "inner", "small", "after"} and meter.seconds["outer"] >= meter.seconds["inner"]

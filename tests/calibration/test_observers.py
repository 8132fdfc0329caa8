import pytest
import torch

from quantkit.calibration.observers import ActivationObserver
from quantkit.errors import NonFiniteActivationError


def _batches(seed=0, channels=16):
    torch.manual_seed(seed)
    batches = [torch.randn(2, 32, channels) for _ in range(3)]
    for batch in batches:
        batch[..., 3] *= 25.0  # an outlier channel
    return batches


def test_observer_returns_its_input_unchanged():
    observer = ActivationObserver("layer", 16)
    x = torch.randn(2, 4, 16)
    assert observer(x) is x


def test_range_and_outlier_statistics_match_a_plain_reference():
    batches = _batches()
    observer = ActivationObserver("layer", 16)
    for batch in batches:
        observer(batch)
    everything = torch.cat([b.reshape(-1, 16) for b in batches]).abs()
    assert observer.absmax_.item() == everything.max().item()
    assert torch.equal(observer.channel_absmax_, everything.amax(dim=0))
    assert observer.num_values_.item() == everything.numel()

    threshold = observer.set_outlier_threshold(0.99)
    assert threshold == pytest.approx(torch.quantile(everything.flatten().double(), 0.99, interpolation="higher").item(), rel=0.005)
    for batch in batches:
        observer(batch)
    beyond = everything > threshold
    assert torch.equal(observer.channel_outlier_count_, beyond.sum(dim=0))
    expected_excess = ((everything - threshold).clamp_min(0)).double().sum(dim=0)
    assert torch.allclose(observer.channel_outlier_excess_, expected_excess, rtol=1e-6)
    assert observer.channel_outlier_count_.argmax().item() == 3


def test_outlier_pass_requires_a_threshold():
    observer = ActivationObserver("layer", 16)
    observer(torch.randn(1, 2, 16))
    observer.current_pass = type(observer.current_pass).OUTLIERS
    with pytest.raises(RuntimeError, match="set_outlier_threshold"):
        observer(torch.randn(1, 2, 16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activation_names_the_layer(bad):
    observer = ActivationObserver("model.layers.7.mlp.down_proj:input", 4)
    x = torch.ones(1, 2, 4)
    x[0, 1, 2] = bad
    with pytest.raises(NonFiniteActivationError, match=r"model\.layers\.7\.mlp\.down_proj"):
        observer(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activation_in_the_outlier_pass_is_reported_before_it_is_counted(bad):
    observer = ActivationObserver("model.layers.3.mlp.up_proj:output", 4)
    observer(torch.randn(1, 8, 4))
    observer.set_outlier_threshold(0.9)
    counts, excess = observer.channel_outlier_count_.clone(), observer.channel_outlier_excess_.clone()
    x = torch.randn(1, 8, 4)
    x[0, 5, 1] = bad
    with pytest.raises(NonFiniteActivationError, match=r"up_proj.*1 NaN/Inf"):
        observer(x)
    assert torch.equal(observer.channel_outlier_count_, counts) and torch.equal(observer.channel_outlier_excess_, excess)


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match="expected 16 channels"):
        ActivationObserver("layer", 16)(torch.ones(2, 8))

import pytest
import torch

from quantkit.calibration.collect import collect_activation_statistics
from quantkit.calibration.observers import ObserverPass
from quantkit.errors import ResumeMismatchError
from quantkit.models.architecture import find_decoder_layout
from quantkit.statistics import ActivationStatistics
from tests.conftest import PLANTED_CHANNELS, TINY_FAMILIES, TINY_VOCAB, tiny_model


def _sequences(n=6, length=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n, length), generator=generator)


def _reference_tensors(layout, sequences):
    """Every Linear's full input and output over all sequences, by plain hooks."""
    captured = {}

    def hook(name):
        def record(module, args, output):
            captured.setdefault(f"{name}:input", []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
            captured.setdefault(f"{name}:output", []).append(output.detach().reshape(-1, output.shape[-1]))

        return record

    handles = [layout.linear(n).register_forward_hook(hook(n)) for n in layout.linear_names()]
    with torch.no_grad():
        layout.backbone(input_ids=sequences, use_cache=False)
    for handle in handles:
        handle.remove()
    return {key: torch.cat(parts) for key, parts in captured.items()}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_statistics_match_plain_reference(family):
    layout = find_decoder_layout(tiny_model(family, planted_outliers=True))
    sequences = _sequences()
    stats = collect_activation_statistics(layout, sequences, batch_size=4, outlier_quantile=0.999, progress=False)
    reference = _reference_tensors(layout, sequences)
    assert set(stats) == set(reference)
    for key, full in reference.items():
        magnitude = full.abs()
        got = stats[key]
        assert got.absmax.item() == pytest.approx(magnitude.max().item(), rel=1e-6), key
        assert torch.allclose(got.channel_absmax, magnitude.amax(dim=0), rtol=1e-6), key
        assert got.num_values.item() == magnitude.numel()
        assert got.quantile(0.999) == pytest.approx(torch.quantile(magnitude.flatten().double(), 0.999, interpolation="higher").item(), rel=0.005), key
        threshold = got.outlier_threshold.item()
        assert torch.equal(got.channel_outlier_count, (magnitude > threshold).sum(dim=0)), key


def test_planted_outlier_channels_are_the_top_outlier_channels():
    layout = find_decoder_layout(tiny_model("llama", planted_outliers=True))
    stats = collect_activation_statistics(layout, _sequences(), outlier_quantile=0.99, progress=False)
    mlp_input = stats["model.layers.0.mlp.gate_proj:input"]
    assert set(mlp_input.summary()["top_outlier_channels"][: len(PLANTED_CHANNELS)]) == set(PLANTED_CHANNELS)
    # gate_proj and up_proj read the same tensor: one observer, equal statistics.
    assert torch.equal(mlp_input.channel_absmax, stats["model.layers.0.mlp.up_proj:input"].channel_absmax)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [(ObserverPass.RANGE, 0), (ObserverPass.OUTLIERS, 1)])
def test_killed_run_resumes_with_identical_statistics(tmp_path, kill_at):
    layout = find_decoder_layout(tiny_model("qwen2", planted_outliers=True))
    sequences = _sequences(n=8)
    uninterrupted = collect_activation_statistics(layout, sequences, batch_size=2, progress=False)

    def kill(current, index):
        if (current, index) == kill_at:
            raise _Killed

    with pytest.raises(_Killed):
        collect_activation_statistics(layout, sequences, batch_size=2, checkpoint_dir=tmp_path, fingerprint="run", progress=False, on_batch_end=kill)
    batches_seen = []
    resumed = collect_activation_statistics(
        layout, sequences, batch_size=2, checkpoint_dir=tmp_path, fingerprint="run", progress=False, on_batch_end=lambda p, i: batches_seen.append((p, i))
    )
    total_batches = 2 * 4
    done_before_kill = (0 if kill_at[0] is ObserverPass.RANGE else 4) + kill_at[1] + 1
    assert len(batches_seen) == total_batches - done_before_kill  # it resumed, it did not start over
    assert set(resumed) == set(uninterrupted)
    for key in uninterrupted:
        for field in ("absmax", "channel_absmax", "histogram", "outlier_threshold", "channel_outlier_count", "channel_outlier_excess"):
            assert torch.equal(getattr(resumed[key], field), getattr(uninterrupted[key], field)), (key, field)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    layout = find_decoder_layout(tiny_model("llama"))
    sequences = _sequences(n=4)
    collect_activation_statistics(layout, sequences, batch_size=2, checkpoint_dir=tmp_path, fingerprint="a", progress=False)
    with pytest.raises(ResumeMismatchError, match="other settings"):
        collect_activation_statistics(layout, sequences, batch_size=2, checkpoint_dir=tmp_path, fingerprint="b", progress=False)


def test_statistics_round_trip_through_safetensors(tmp_path):
    layout = find_decoder_layout(tiny_model("gemma3", planted_outliers=True))
    stats = collect_activation_statistics(layout, _sequences(n=2), progress=False)
    stats.save(tmp_path, metadata={"model": "tiny"})
    loaded = ActivationStatistics.load(tmp_path)
    assert set(loaded) == set(stats)
    for key in stats:
        assert torch.equal(loaded[key].channel_outlier_excess, stats[key].channel_outlier_excess)
        assert loaded[key].summary() == stats[key].summary()
    assert (tmp_path / "statistics.json").is_file()

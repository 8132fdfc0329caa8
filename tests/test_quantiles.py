import pytest
import torch

from quantkit.quantiles import _BIN_WIDTH, LOG10_MIN, NUM_BINS, log_histogram, quantile_from_log_histogram


@pytest.mark.parametrize("q", [0.5, 0.99, 0.999, 0.9999])
def test_histogram_quantile_matches_exact_quantile(q):
    torch.manual_seed(0)
    # Heavy-tailed like LLM activations: Student-t with 3 degrees of freedom.
    x = torch.distributions.StudentT(3.0).sample((200_000,))
    exact = torch.quantile(x.abs().double(), q, interpolation="higher").item()
    estimate = quantile_from_log_histogram(log_histogram(x), q, x.abs().max().item())
    assert estimate == pytest.approx(exact, rel=0.005)


def test_histogram_is_additive_across_batches():
    torch.manual_seed(1)
    a, b = torch.randn(1000), torch.randn(3000) * 5
    assert torch.equal(log_histogram(a) + log_histogram(b), log_histogram(torch.cat([a, b])))
    assert int(log_histogram(a).sum()) == 1000 and len(log_histogram(a)) == NUM_BINS


def test_quantile_never_exceeds_absmax_and_handles_zeros():
    x = torch.zeros(100)
    x[0] = 3.0
    counts = log_histogram(x)
    assert quantile_from_log_histogram(counts, 1.0, 3.0) <= 3.0
    assert quantile_from_log_histogram(counts, 0.5, 3.0) < 1e-7


def test_bad_quantile_and_empty_histogram_are_rejected():
    with pytest.raises(ValueError, match="quantile must be in"):
        quantile_from_log_histogram(log_histogram(torch.ones(3)), 1.5, 1.0)
    with pytest.raises(ValueError, match="empty histogram"):
        quantile_from_log_histogram(torch.zeros(NUM_BINS, dtype=torch.int64), 0.5, 1.0)


def test_histogram_bins_are_the_floor_of_log10_over_the_bin_width():
    torch.manual_seed(2)
    x = torch.cat([torch.randn(5000) * 10.0 ** torch.randint(-10, 8, (5000,)), torch.tensor([0.0, -0.0, 1e-30, 1e30, float("inf")])])
    plain = ((torch.log10(x.abs().clamp_min(10.0**LOG10_MIN)) - LOG10_MIN) / _BIN_WIDTH).floor().clamp(0, NUM_BINS - 1).long()
    assert torch.equal(log_histogram(x), torch.bincount(plain, minlength=NUM_BINS))
    assert int(log_histogram(x)[-1]) >= 2  # 1e30 and +inf land in the last bin

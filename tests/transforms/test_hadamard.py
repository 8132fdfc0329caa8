"""Hadamard matrices of every order the constructions reach, and their randomized rotation."""

import pytest
import torch

from quantkit.transforms.hadamard import HadamardUnavailable, hadamard_construction, hadamard_matrix, random_hadamard

# Powers of two, Paley I (12, 20, 1536 = 12·128), Paley II (28, 36, 576 = 36·16, 896 = 28·32, 1152 = 36·32)
ORDERS = (1, 2, 8, 12, 20, 28, 36, 64, 576, 896, 1152, 1536)


@pytest.mark.parametrize("order", ORDERS)
def test_hadamard_matrix_is_hadamard(order):
    h = hadamard_matrix(order)
    assert h.shape == (order, order) and bool((h.abs() == 1).all())
    assert torch.equal(h @ h.T, order * torch.eye(order, dtype=torch.float64))


def test_constructions_are_named():
    assert hadamard_construction(2048) == "sylvester(2048)"
    assert hadamard_construction(576) == "paley2(17) x sylvester(16)"
    assert hadamard_construction(1536) == "paley1(11) x sylvester(128)"


@pytest.mark.parametrize("order", (6, 0, 3 * 2 * 7))
def test_unreachable_orders_are_refused(order):
    with pytest.raises(HadamardUnavailable, match=f"order {order}"):
        hadamard_construction(order)


def test_random_hadamard_is_orthogonal_and_seeded():
    r = random_hadamard(576, seed=3)
    assert torch.allclose(r @ r.T, torch.eye(576, dtype=torch.float64), atol=1e-12)
    assert torch.equal(r, random_hadamard(576, seed=3))
    assert not torch.equal(r, random_hadamard(576, seed=4))
    assert torch.allclose(r.abs(), torch.full_like(r, 576**-0.5))  # every channel carries 1/√d of each input channel

"""Orthogonal matrices for rotating activations: Hadamard matrices of any order we can
build, normalised and with random signs (QuaRot, arXiv 2404.00456 §4; SpinQuant,
arXiv 2405.16406 §3 — a rotation spreads a few large channels over all of them).

Pure, side-effect-free tensor functions. scipy builds Hadamard matrices only of order 2^k
and torch none at all, while model widths are often 2^k·m (SmolLM2: 576 = 36·16, Qwen2.5:
896 = 28·32), so the Paley constructions are written here: H_m from a prime q with
m = q + 1 (q ≡ 3 mod 4, Paley I) or m = 2(q + 1) (q ≡ 1 mod 4, Paley II), then
H_n = H_m ⊗ H_{2^k} (Sylvester).
"""

from __future__ import annotations

import torch

__all__ = ["hadamard_matrix", "hadamard_construction", "random_hadamard", "HadamardUnavailable"]


class HadamardUnavailable(ValueError):
    """No construction here gives a Hadamard matrix of this order."""


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q**0.5) + 1))


def _sylvester(order: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(j − i), χ the quadratic character mod the prime q (χ(0) = 0)."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    index = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[index]


def _paley_one(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [−1, Q]] (Q skew)."""
    core = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    core[0, 1:], core[1:, 0], core[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return core + torch.eye(q + 1, dtype=torch.float64)


def _paley_two(q: int) -> torch.Tensor:
    """Order 2(q + 1) for a prime q ≡ 1 (mod 4): C = [[0, 1ᵀ], [1, Q]] (symmetric), each 0
    replaced by [[1, −1], [−1, −1]] and each ±1 by ±[[1, 1], [1, −1]]."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, one) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)


_BUILDERS = {"sylvester": _sylvester, "paley1": _paley_one, "paley2": _paley_two}  # name → builder of its argument


def _factors(order: int) -> list[tuple[str, int]]:
    """The Kronecker factors (builder name, argument) of a Hadamard matrix of ``order``."""
    if order < 1:
        raise HadamardUnavailable(f"order {order}: expected a positive matrix order")
    power = 1
    while order % (power * 2) == 0:
        power *= 2
    while power >= 1:  # the largest Sylvester factor first, so the odd part stays small
        m = order // power
        if m == 1:
            return [("sylvester", power)]
        if m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            return [("paley1", m - 1), ("sylvester", power)]
        if m % 4 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
            return [("paley2", m // 2 - 1), ("sylvester", power)]
        power //= 2
    raise HadamardUnavailable(f"order {order}: not 2^k·m with m − 1 a prime ≡ 3 mod 4 or m/2 − 1 a prime ≡ 1 mod 4")


def hadamard_construction(order: int) -> str:
    """How :func:`hadamard_matrix` builds this order, e.g. ``"paley2(17) x sylvester(16)"``;
    raises :class:`HadamardUnavailable` when none of its constructions does."""
    return " x ".join(f"{name}({argument})" for name, argument in _factors(order))


def hadamard_matrix(order: int) -> torch.Tensor:
    """A ±1 Hadamard matrix H of ``order`` (H Hᵀ = order · I), float64."""
    h = torch.ones(1, 1, dtype=torch.float64)
    for name, argument in _factors(order):
        h = torch.kron(h, _BUILDERS[name](argument))
    assert h.shape == (order, order)
    return h


def random_hadamard(order: int, seed: int = 0) -> torch.Tensor:
    """The orthogonal R = diag(s) · H / √n with random signs s (QuaRot's randomized
    Hadamard), float64; R Rᵀ = I. Deterministic in ``seed``."""
    signs = torch.randint(0, 2, (order,), generator=torch.Generator().manual_seed(seed)).to(torch.float64) * 2 - 1
    return signs[:, None] * hadamard_matrix(order) / order**0.5

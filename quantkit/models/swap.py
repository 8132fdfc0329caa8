"""Swap a model's Linears for simulated ones for the duration of a ``with`` block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from quantkit.models.architecture import DecoderLayout

__all__ = ["replaced_linears"]


@contextmanager
def replaced_linears(layout: DecoderLayout, names: Iterable[str], make: Callable[[str, nn.Linear], nn.Module]) -> Iterator[None]:
    """Within the block, each Linear ``name`` is replaced by ``make(name, linear)``; the
    originals are restored afterwards, also when the block raises."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name in names:
            parent_name, attribute = name.rsplit(".", 1)
            parent = layout.model.get_submodule(parent_name)
            original = getattr(parent, attribute)
            setattr(parent, attribute, make(name, original))
            swapped.append((parent, attribute, original))
        yield
    finally:
        for parent, attribute, original in reversed(swapped):
            setattr(parent, attribute, original)

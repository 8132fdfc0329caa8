"""Helpers for the validated settings dataclasses (configs reject unknown keys)."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

__all__ = ["from_checked_dict"]

T = TypeVar("T")


def from_checked_dict(cls: type[T], values: dict, what: str) -> T:
    """``cls(**values)``, refusing keys that are not fields of ``cls`` by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; valid ones are {sorted(known)}")
    return cls(**values)

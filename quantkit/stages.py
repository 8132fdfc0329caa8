"""Wall time and peak resident memory of each stage of a long run (calibration, export).

A stage's peak is the process's resident-set high-water mark while the stage ran: Linux
lets a process reset its own mark (``/proc/self/clear_refs``, value 5), so each stage is
measured from its own start. Where that is not available the mark cannot be reset and a
stage's figure is the peak of the run so far. Nothing in the standard library or in the
dependencies measures a per-stage peak (``resource`` gives the whole process's only), hence
this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["StageMeter", "process_peak_mb", "release_freed_memory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_HIGH_WATER = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def process_peak_mb() -> float:
    """The process's peak resident memory so far, in MB (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # macOS reports bytes, Linux KiB


def _high_water_mb() -> float | None:
    try:
        match = _HIGH_WATER.search(_STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_high_water() -> None:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux: a stage's figure is then the peak of the run so far


def release_freed_memory() -> None:
    """Hand the memory freed by a stage back to the system. glibc keeps freed blocks of
    large temporaries in its heaps (on SmolLM2-360M, 1.8 GB after recording the output
    ranges); the next stage would reuse some of it, but the resident figure would still
    count it. ``malloc_trim`` is glibc's; elsewhere this does nothing."""
    gc.collect()  # objects in reference cycles (an ONNX Runtime session, a model) first
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs a subprocess); None elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


class StageMeter:
    """Seconds and peak resident MB per named stage; stages may nest (an outer stage's
    peak includes its inner stages').

    >>> meter = StageMeter()
    >>> with meter.stage("load"):
    ...     data = bytearray(10**8)
    >>> meter.peak_mb["load"] >= 95
    True
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self._open: list[float] = []  # running peak of each open stage, innermost last
        self._run_peak = 0.0  # the high-water mark read before each reset, over the whole run

    def _current_mark(self) -> float:
        mark = _high_water_mb()
        return process_peak_mb() if mark is None else mark

    def _fold(self, mark: float) -> None:
        self._open = [max(peak, mark) for peak in self._open]
        self._run_peak = max(self._run_peak, mark)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._fold(self._current_mark())
        _reset_high_water()
        self._open.append(self._current_mark())
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            self._fold(self._current_mark())
            self.peak_mb[name] = self._open.pop()
            release_freed_memory()

    def run_peak_mb(self) -> float:
        """Peak resident MB of the whole run so far, over every stage and between them."""
        self._fold(self._current_mark())
        return max(self._run_peak, process_peak_mb(), *self.peak_mb.values())

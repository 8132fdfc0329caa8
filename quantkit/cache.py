"""Where quantkit keeps converted models and prepared data: ``$QUANTKIT_CACHE``,
default ``$XDG_CACHE_HOME/quantkit`` (``~/.cache/quantkit``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cache_dir", "atomic_directory"]


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("QUANTKIT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "quantkit"
    return base.joinpath(*parts)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; rename it to ``final`` only if the
    block completes, so a half-written folder never appears under the final name."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)

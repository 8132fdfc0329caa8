"""quantkit: calibrate small decoder-only LLMs for INT8 execution on mobile NPUs.

Implements the method of "Fast On-device LLM Inference with NPUs" (llm.npu,
arXiv 2407.05858): chunked prefill with static shapes, shadow outlier execution and
sensitivity-driven block placement.

This module stays light on purpose: ``import quantkit.runtime`` must not pull in
AIMET, transformers or the calibration code. The heavy entry points live in
``quantkit.calibration`` (``calibrate``) and the CLI (``quantkit.cli``).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["__version__"]

# In an installed package (regular or editable), setuptools maps the top-level folders
# runtime/ and eval/ to quantkit.runtime and quantkit.eval (see pyproject.toml). When the
# code runs straight from a checkout with no install, this finder does the same mapping,
# for exactly those two names.
_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
_CHECKOUT_SUBPACKAGES = {f"{__name__}.{folder}": _CHECKOUT_ROOT / folder for folder in ("runtime", "eval")}


class _CheckoutSubpackageFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        location = _CHECKOUT_SUBPACKAGES.get(fullname)
        if location is None:
            return None
        return importlib.util.spec_from_file_location(fullname, location / "__init__.py", submodule_search_locations=[str(location)])


def _running_from_checkout() -> bool:
    return (_CHECKOUT_ROOT / "pyproject.toml").is_file() and all((location / "__init__.py").is_file() for location in _CHECKOUT_SUBPACKAGES.values())


if _running_from_checkout() and not any(isinstance(finder, _CheckoutSubpackageFinder) for finder in sys.meta_path):
    sys.meta_path.append(_CheckoutSubpackageFinder())

"""The package layout: light top-level import, runtime isolated from calibration, and
runtime/ + eval/ importable as quantkit.runtime / quantkit.eval from a checkout too."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_runtime_imports_no_calibration_aimet_or_transformers():
    result = _run(
        "import sys, quantkit.runtime, quantkit.runtime.engine, quantkit.runtime.bundle, quantkit.runtime.generate, quantkit.runtime.tokenizer, quantkit.runtime.qdq, quantkit.runtime.npu, quantkit.export.qnn; "
        "heavy = [m for m in ('aimet_torch', 'transformers', 'quantkit.calibration', 'lm_eval') if m in sys.modules]; "
        "print(heavy); assert not heavy"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_subpackages_map_to_top_level_folders_from_a_checkout():
    # -S: no site-packages, so no installed copy of quantkit can answer; only the checkout.
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import importlib.util, quantkit.runtime; "
        "print(quantkit.runtime.__file__); print(importlib.util.find_spec('quantkit.eval').origin)"
    )
    result = _run(code, "-S")
    assert result.returncode == 0, result.stderr
    runtime_file, eval_file = result.stdout.split()
    assert Path(runtime_file) == ROOT / "runtime" / "__init__.py"
    assert Path(eval_file) == ROOT / "eval" / "__init__.py"


def test_installed_package_maps_the_same_folders():
    import quantkit.eval
    import quantkit.runtime

    assert Path(quantkit.runtime.__file__).parent.name == "runtime"
    assert Path(quantkit.eval.__file__).parent.name == "eval"
    assert callable(quantkit.eval.perplexity)

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
        "import sys, quantkit.runtime, quantkit.runtime.engine, quantkit.runtime.bundle, quantkit.runtime.generate, quantkit.runtime.tokenizer, quantkit.runtime.qdq, quantkit.runtime.npu, quantkit.runtime.sessions; "
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


def test_pyproject_declares_every_package_folder():
    # A folder missing from the list installs from an editable checkout but not from the
    # wheel (`pip install .`), where importing it fails.
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setup["package-dir"].items()}

    def folder_of(package: str) -> Path:
        top = max((p for p in folders if package == p or package.startswith(p + ".")), key=len)
        return folders[top].joinpath(*package[len(top) :].split(".")[1:])

    declared = {folder_of(package) for package in setup["packages"]}
    on_disk = {init.parent for root in folders.values() for init in root.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert on_disk - declared == set(), f"package folders missing from pyproject's packages: {sorted(map(str, on_disk - declared))}"
    assert declared - on_disk == set()

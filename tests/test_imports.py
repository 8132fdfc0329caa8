"""The package layout: one-way layers (every import points down the list below, no import
cycles), light top-level import, runtime isolated from calibration, and runtime/ + eval/
importable as quantkit.runtime / quantkit.eval from a checkout too."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own layer and the layers below it, never one above.
# The runtime depends only on the low-level modules: a bundle and these are all it needs.
LAYERS = (
    ("low-level", ("quantkit", "quantkit.errors", "quantkit.hashing", "quantkit.quant_primitives", "quantkit.stages")),
    ("runtime (the bundle contract and its executors)", ("quantkit.runtime",)),
    ("formats and sources", ("quantkit.quantiles", "quantkit.statistics", "quantkit.tensor_files", "quantkit.settings", "quantkit.cache", "quantkit.data")),
    ("models", ("quantkit.models", "quantkit.transforms")),
    ("evaluation through the runtime", ("quantkit.eval",)),
    ("algorithms", ("quantkit.outlier_shadow", "quantkit.precision", "quantkit.weights", "quantkit.sensitivity", "quantkit.baselines")),
    ("artefacts", ("quantkit.export", "quantkit.report")),
    ("calibration", ("quantkit.calibration",)),
    ("entry points", ("quantkit.cli", "quantkit.cli_docs", "quantkit.__main__")),
)


def _package_dirs() -> dict[str, Path]:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in setup["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    dirs = _package_dirs()
    modules = {}
    for package, folder in dirs.items():
        nested = [Path(*other.split(".")[1:]) for other in dirs if other.startswith(package + ".")]
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder)
            if "__pycache__" in relative.parts or any(relative.is_relative_to(n) for n in nested):
                continue
            parts = relative.with_suffix("").parts
            modules[".".join((package, *parts[: -1 if parts[-1] == "__init__" else None]))] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The quantkit modules ``name`` imports, anywhere in the file (function-level too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([node.module] if node.module else [])])
                if node.level
                else node.module
            )
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {target for target in found if target == "quantkit" or target.startswith("quantkit.")}


def _layer(module: str) -> int | None:
    for index, (_, units) in enumerate(LAYERS):
        if any(module == unit or (unit != "quantkit" and module.startswith(unit + ".")) for unit in units):
            return index
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert sorted(m for m in _modules() if _layer(m) is None) == [], "add the new module or package to LAYERS in tests/test_imports.py"


def test_imports_name_existing_modules():
    graph = _graph()
    missing = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets if target not in graph)
    assert missing == []


def test_imports_point_down_the_layers():
    upward = sorted(
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) is not None and _layer(target) > _layer(module)
    )
    assert upward == [], "\n".join(upward)


def test_runtime_imports_only_the_low_level_modules():
    low_level = set(LAYERS[0][1])
    outside = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.startswith("quantkit.runtime")
        for target in targets
        if not (target.startswith("quantkit.runtime") or target in low_level)
    )
    assert outside == [], "\n".join(outside)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target in graph and target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(cycles)


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
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setup["package-dir"].items()}

    def folder_of(package: str) -> Path:
        top = max((p for p in folders if package == p or package.startswith(p + ".")), key=len)
        return folders[top].joinpath(*package[len(top) :].split(".")[1:])

    declared = {folder_of(package) for package in setup["packages"]}
    on_disk = {init.parent for root in folders.values() for init in root.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert on_disk - declared == set(), f"package folders missing from pyproject's packages: {sorted(map(str, on_disk - declared))}"
    data_only = declared - on_disk  # folders of data files, declared so that setuptools ships them
    assert all(folder.is_dir() and not any(folder.glob("*.py")) for folder in data_only), sorted(map(str, data_only))

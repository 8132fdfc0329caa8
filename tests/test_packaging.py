"""The wheel: built from the files of this checkout (as `pip install .` builds it), it holds
every module and every data file of every package folder, under the quantkit.* name that
pyproject's package-dir maps the folder to, and nothing at the top level but quantkit.

An editable install and a checkout import any folder on disk, so a package left out of
pyproject's list, or a data file left out of its package-data, only fails once installed
from the wheel. .ci/check_wheel.sh installs that wheel and imports every module from it.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# Never package content: byte code and the folders builds and caches leave in a checkout.
_NOT_SOURCE = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def _checkout_files() -> list[str]:
    """The files of the checkout that a fresh clone would have, plus new files not yet
    committed: git's tracked and untracked-but-not-ignored files (without git: every file
    outside the usual build, cache and venv folders)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        names = listed.stdout.split("\0")
    else:
        skip = _NOT_SOURCE | {".git", ".venv", "build", "dist", "calib", "bundle"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return sorted(n for n in names if n and (ROOT / n).is_file() and not _NOT_SOURCE & set(Path(n).parts) and not n.endswith(".pyc"))


def build_wheel(source: Path, out: Path) -> Path:
    """Copy the checkout's files to `source` and build the wheel there into `out`: a copy,
    so neither a stale build/ in the checkout can add files nor the build leave any."""
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("quantkit-*.whl")
    return wheel


def expected_contents(source: Path) -> set[str]:
    """Every file under each package-dir folder of `source`, at its path in the wheel."""
    package_dir = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in package_dir.items():
        others = [Path(f) for p, f in package_dir.items() if p != package and Path(f).is_relative_to(folder)]
        for path in (source / folder).rglob("*"):
            relative = path.relative_to(source / folder)
            if path.is_file() and not any(path.relative_to(source).is_relative_to(o) for o in others):
                expected.add("/".join([*package.split("."), *relative.parts]))
    return expected


def test_wheel_holds_every_module_and_data_file(tmp_path):
    source, out = tmp_path / "source", tmp_path / "dist"
    wheel = build_wheel(source, out)
    expected = expected_contents(source)
    assert any(name.startswith("quantkit/runtime/") for name in expected) and "quantkit/eval/suites/smollm2.yaml" in expected

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    missing = sorted(expected - set(names))
    assert not missing, f"in the source tree but not in the wheel (pyproject's packages / package-data): {missing}"
    # runtime/ and eval/ only as quantkit.runtime / quantkit.eval, never as top-level packages
    top_level = {name.split("/")[0] for name in names} - {"quantkit"}
    assert len(top_level) == 1 and top_level.pop().endswith(".dist-info"), top_level
    extra = sorted(n for n in names if n.startswith("quantkit/") and n not in expected)
    assert not extra, f"in the wheel but not in the source tree: {extra}"
    assert "quantkit = quantkit.cli:main" in entry_points

#!/usr/bin/env bash
# The wheel as a user gets it: build it from this checkout's files, install it (not editable)
# into a fresh venv that borrows the dependencies already installed in .venv, then, from a
# folder outside the checkout, run the CLI's help pages and import every module of the
# source tree, checking that each one comes from the installed copy.
# Needs ./install.sh to have run (it uses .venv's pip, setuptools and dependencies).
# Works offline: no build isolation, nothing fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(cd "${QUANTKIT_VENV:-.venv}" && pwd)/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. Build from a copy (git's tracked and not-ignored files), so a stale build/ in the
#    checkout cannot add files to the wheel and the build leaves nothing behind.
mkdir "$WORK/source" "$WORK/dist" "$WORK/elsewhere"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$WORK/source"
else
    tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=./calib --exclude=./bundle -cf - . | tar -xf - -C "$WORK/source"
fi
"$PY" -m pip wheel "$WORK/source" --quiet --no-deps --no-build-isolation --no-index -w "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/quantkit-*.whl)

# 2. A fresh venv; .venv's site-packages joins its sys.path through a plain .pth line, so
#    the dependencies resolve but .venv's own .pth files (the editable install of this
#    checkout among them) are not processed: quantkit can only come from the wheel.
"$PY" -m venv --without-pip "$WORK/venv"
FRESH=$WORK/venv/bin/python
"$PY" -c 'import sysconfig; print(*dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]), sep="\n")' \
    >"$("$FRESH" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/quantkit_ci_dependencies.pth"
"$PY" -m pip --python "$FRESH" install --quiet --no-deps --no-index "$WHEEL"

# 3. From outside the checkout: the console script and every module, data file included.
cd "$WORK/elsewhere"
for command in "" calibrate export run; do
    # shellcheck disable=SC2086  # "" runs `quantkit --help`
    "$WORK/venv/bin/quantkit" $command --help >/dev/null
done
"$FRESH" -m quantkit --help >/dev/null  # quantkit/__main__.py, the one module not imported below
"$FRESH" - "$WORK/source" <<'EOF'
import importlib
import sys
import sysconfig
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's copy (.venv's site-packages is on the path)
    from pip._vendor import tomli as tomllib
from pathlib import Path

root, site = Path(sys.argv[1]), Path(sysconfig.get_path("purelib")).resolve()
package_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
modules, data = set(), set()
for package, folder in package_dir.items():
    for path in (root / folder).rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        parts = [*package.split("."), *path.relative_to(root / folder).parts]
        if path.suffix == ".py":
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__.py" else [*parts[:-1], path.stem]))
        else:
            data.add(site.joinpath(*parts))
wrong = {}
for name in sorted(m for m in modules if not m.endswith(".__main__")):  # __main__ would run the CLI
    module = importlib.import_module(name)
    origin = Path(module.__file__).resolve()
    if not origin.is_relative_to(site):
        wrong[name] = str(origin)
assert not wrong, f"imported from outside the installed wheel: {wrong}"
missing = sorted(str(p) for p in data if not p.is_file())
assert not missing, f"data files missing from the installed wheel: {missing}"
print(f"wheel OK: {len(modules)} modules imported and {len(data)} data files found in the installed copy")
EOF

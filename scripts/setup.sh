#!/usr/bin/env bash
# Sets up facepipe on a fresh machine: a virtual environment in .venv with every dependency
# pinned by constraints.txt, and facepipe installed in editable mode. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# A stamp of constraints + pyproject skips the (slow) resolver when nothing changed.
stamp=.venv/.facepipe-installed
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
  # torch==2.13.0 resolves to the local CPU wheel here; on a GPU box install the CUDA build first.
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
echo "facepipe environment ready in .venv"

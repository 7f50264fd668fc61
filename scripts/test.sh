#!/usr/bin/env bash
# Set up (a .venv with the project and its dev tools) and run every check and test.
# Needs the local services: PostgreSQL 127.0.0.1:5432 and Redis 127.0.0.1:6379
# (the tests start them if they are installed but stopped).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

echo "== ruff";         .venv/bin/ruff check app workers tests migrations bench
echo "== mypy";         .venv/bin/mypy
echo "== import rules"; .venv/bin/lint-imports
echo "== pytest";       .venv/bin/python -m pytest -q "$@"

# graph-sitter needs Python >= 3.12: its tests (tests/graph_sitter) run in a second
# venv, .venv312, with the graph-sitter extra, when a python3.12 is found (PYTHON312,
# then PATH, then pyenv). The extra is installed again only when pyproject.toml changes.
# AIW_SKIP_PY312=1 skips this part.
find_python312() {
  local candidate
  for candidate in ${PYTHON312:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [ "${AIW_SKIP_PY312:-0}" = "1" ]; then
  echo "== graph-sitter tests skipped (AIW_SKIP_PY312=1)"
elif PY312="$(find_python312)"; then
  if [ ! -x .venv312/bin/python ]; then
    "$PY312" -m venv .venv312
  fi
  stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ "$(cat .venv312/.aiw-installed 2>/dev/null)" != "$stamp" ]; then
    echo "== .venv312: installing the project with the graph-sitter extra"
    .venv312/bin/python -m pip install --quiet --upgrade pip
    .venv312/bin/python -m pip install --quiet -e ".[dev,graph-sitter]"
    echo "$stamp" > .venv312/.aiw-installed
  fi
  echo "== pytest (Python 3.12, graph-sitter)"
  .venv312/bin/python -m pytest -q tests/graph_sitter
else
  echo "== graph-sitter tests skipped: no python3.12 found (set PYTHON312=/path/to/python3.12)"
fi

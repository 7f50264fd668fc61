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

#!/usr/bin/env bash
# Install tractmap with its test extras into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# lint: ruff (configured in pyproject.toml) and snakemake --lint (tests/test_pipeline.py)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export QT_QPA_PLATFORM=offscreen
.venv/bin/python -m pytest -ra --durations=15 "$@"

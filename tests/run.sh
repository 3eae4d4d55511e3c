#!/usr/bin/env bash
# Install tractmap with its test extras into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# the SLURM tests' packages (tests/test_slurm.py, as root): installed in the background while the
# Python packages install and the first tests run; the harness waits for this install before it starts the daemons
if [ "$(id -u)" = 0 ]; then
    bash tests/slurm/harness.sh install >/tmp/tractmap-slurm-install.log 2>&1 &
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# lint: ruff (configured in pyproject.toml) and snakemake --lint (tests/test_pipeline.py)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export QT_QPA_PLATFORM=offscreen
.venv/bin/python -m pytest -ra --durations=15 "$@"

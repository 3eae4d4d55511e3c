#!/usr/bin/env bash
# Install tractmap with its test extras into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# the review app's browser test drives Debian's Chromium (Playwright's own browser download is not reachable);
# installed before the SLURM packages' background install so that the two never wait on apt's lock
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
        echo "chromium could not be installed: tests/test_review_app.py's browser test will be skipped" >&2
fi
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

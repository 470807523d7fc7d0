#!/usr/bin/env bash
# Set up .venv (pinned), lint (ruff: pyflakes, bugbear, isort, line length; config in pyproject.toml), then run
# the test suite. Extra arguments go to pytest. A lint error fails the command before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest "$@"

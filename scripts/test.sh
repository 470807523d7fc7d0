#!/usr/bin/env bash
# Set up .venv (pinned) and Chromium for the browser test, lint (ruff: pyflakes, bugbear, isort, line length; config in pyproject.toml), then run
# the test suite. Extra arguments go to pytest. A lint error fails the command before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_inspection.py opens the `bmojo inspect` page in headless Chromium (Debian's package): install it where
# it is missing and we can (root with apt-get); elsewhere that one test skips, saying so.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest "$@"

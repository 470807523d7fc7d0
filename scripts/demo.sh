#!/usr/bin/env bash
# Set up .venv (pinned) and run the main job on built-in defaults: the quick recall-vs-memory
# comparison (MQAR, six architectures; <= 10 minutes on 2 CPU cores). Extra arguments go to
# `bmojo compare`; results land in runs/quick/ unless --out is given. Run again, it resumes the same folder
# (an interrupted run continues; a finished one prints its table).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
if [[ " ${args[*]-} " != *" --out "* ]]; then args+=(--out runs/quick --resume); fi
# --jobs 2: two one-thread processes side by side use two cores better than one two-thread process on these
# small models (docs/recall.md); pass --jobs 1 to run them one after the other
if [[ " ${args[*]-} " != *" --jobs "* ]]; then args+=(--jobs 2); fi
exec .venv/bin/bmojo compare --preset quick "${args[@]}"

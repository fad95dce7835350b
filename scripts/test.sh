#!/usr/bin/env bash
# Set up the environment if needed, then lint, type-check and run the whole test suite on CPU.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail
ruff check gtpo_plugin tests scripts
mypy gtpo_plugin
python -m pytest -q "$@"

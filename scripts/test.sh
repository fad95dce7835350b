#!/usr/bin/env bash
# Set up the environment if needed, then lint, type-check and run the whole test suite on CPU.
# Usage: bash scripts/test.sh [extra pytest arguments]
# The environment it builds has verl and megatron-core, so a test skipped because either cannot be
# imported is a failure here (GTPO_REQUIRE_VERL=1, see tests/conftest.py; set it to 0 to allow skips).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail
export GTPO_REQUIRE_VERL="${GTPO_REQUIRE_VERL:-1}"
ruff check gtpo_plugin hydra_plugins tests scripts
mypy gtpo_plugin hydra_plugins
python -m pytest -q "$@"

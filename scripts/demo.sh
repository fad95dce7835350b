#!/usr/bin/env bash
# Set up the environment if needed, then run the CPU demo: GTPO vs GRPO through verl's algorithm layer.
# Usage: bash scripts/demo.sh [gtpo-demo options, e.g. --steps 40 --out outputs/demo]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set -euo pipefail
python -m gtpo_plugin.demo "$@"

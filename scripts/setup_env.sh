#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with everything the tests and the demo need.
# Usage: source scripts/setup_env.sh      (VENV=path to choose where; default .venv)
#        VENV=.venv-verl090 VERL_VERSION=0.9.0 source scripts/setup_env.sh   (another supported verl)
# torch is installed first and pinned, so that pip keeps the CPU build instead of pulling a CUDA one.
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VERL_VERSION="${VERL_VERSION:-}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] < (3, 13), "Python 3.10-3.12 is required (verl 0.9)"'
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.gtpo-installed"
wanted="$( (cat pyproject.toml scripts/setup_env.sh; echo "verl=$VERL_VERSION torch=$TORCH_VERSION") | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    pins=("torch==${TORCH_VERSION}")
    if [ -n "$VERL_VERSION" ]; then pins+=("verl==${VERL_VERSION}"); fi
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet "torch==${TORCH_VERSION}"
    python -m pip install --quiet -e ".[verl,megatron,eval,test]" "${pins[@]}"
    echo "$wanted" > "$stamp"
fi
set +euo pipefail

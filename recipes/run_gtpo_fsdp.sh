#!/usr/bin/env bash
# GTPO (arXiv 2508.03772) on GSM8K or MATH: verl's FSDP engine, vLLM rollouts, no KL term, no reference model.
# The A/B twins: run_grpo_fsdp.sh (GRPO with KL loss) and run_grpo_no_kl_fsdp.sh (GRPO without).
#
# Launch, one node with 8 GPUs (data from scripts/prepare_data.py in $HOME/data/gtpo):
#   bash recipes/run_gtpo_fsdp.sh
# MATH with Llama-3.1-8B-Instruct on two nodes of a running Ray cluster (recipes/README.md):
#   DATASET=math MODEL_PATH=meta-llama/Llama-3.1-8B-Instruct NNODES=2 bash recipes/run_gtpo_fsdp.sh
# Print verl's resolved config and exit (no Ray, no GPU):
#   DRY_RUN=1 bash recipes/run_gtpo_fsdp.sh
# Settings are environment variables (recipes/common.sh lists them with their defaults); extra arguments are
# Hydra overrides, e.g. actor_rollout_ref.rollout.n=12 (the paper's other group size).
set -xeuo pipefail

ALGORITHM=gtpo
ENGINE=fsdp
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

python3 -m verl.trainer.main_ppo \
    --config-path "$RECIPE_CONFIG_DIR" --config-name "$ALGORITHM" \
    "${COMMON_ARGS[@]}" "${ENGINE_ARGS[@]}" "$@" "${DRY_RUN_ARGS[@]}"

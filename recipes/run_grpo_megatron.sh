#!/usr/bin/env bash
# verl's built-in GRPO, the A/B twin of run_gtpo_megatron.sh on GSM8K or MATH: verl's Megatron engine, vLLM rollouts, KL loss (low_var_kl, 0.001) against a reference model.
# Differs from run_gtpo_megatron.sh only in the algorithm (recipes/config/grpo.yaml vs gtpo.yaml).
#
# Launch, one node with 8 GPUs (data from scripts/prepare_data.py in $HOME/data/gtpo):
#   bash recipes/run_grpo_megatron.sh
# MATH with Llama-3.1-8B-Instruct on two nodes of a running Ray cluster (recipes/README.md):
#   DATASET=math MODEL_PATH=meta-llama/Llama-3.1-8B-Instruct NNODES=2 ACTOR_TP=2 ACTOR_PP=2 bash recipes/run_grpo_megatron.sh
# Print verl's resolved config and exit (no Ray, no GPU):
#   DRY_RUN=1 bash recipes/run_grpo_megatron.sh
# Settings are environment variables (recipes/common.sh lists them with their defaults); extra arguments are
# Hydra overrides, e.g. actor_rollout_ref.rollout.n=12 (the paper's other group size).
set -xeuo pipefail

ALGORITHM=grpo
ENGINE=megatron
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

python3 -m verl.trainer.main_ppo \
    --config-path "$RECIPE_CONFIG_DIR" --config-name "$ALGORITHM" \
    "${COMMON_ARGS[@]}" "${ENGINE_ARGS[@]}" "$@" "${DRY_RUN_ARGS[@]}"

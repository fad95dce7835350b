#!/usr/bin/env bash
# A "does my install work" run on one GPU before a real job (five minutes is the aim; it has not yet run on a
# GPU): verl's stock trainer end to end (vLLM rollouts, FSDP, TransferQueue, checkpoint and resume) with GTPO
# and with its GRPO twins, on a tiny random-init Qwen2 model and synthetic addition problems built here
# (nothing is downloaded).
#
# For each arm (gtpo, grpo_no_kl, grpo): 3 training steps with a checkpoint at step 2 (and at the last step),
# then a second run resumed from global_step_2 that trains step 3 again. Then it checks that every gtpo/*
# metric was logged at every step with a finite value, that the entropy GTPO used is verl's own, that
# gtpo_state.json was saved and the resumed run kept <H>_ini, and prints step time and peak GPU memory per arm
# (verl's timing_s/step and perf/max_memory_*). Exit status 0 only when every check passes.
#
#   bash recipes/run_smoke_1gpu.sh                      # all three arms, outputs in ./smoke_run
#   ARMS=gtpo bash recipes/run_smoke_1gpu.sh            # GTPO only (its resume check included)
#   DRY_RUN=1 bash recipes/run_smoke_1gpu.sh            # build model and data, print the resolved configs, exit (CPU)
# Settings: SMOKE_DIR (./smoke_run), ARMS, GPU_MEMORY_UTILIZATION (0.3), DRY_RUN; extra arguments are Hydra
# overrides for every run. The other recipe variables (recipes/common.sh) are fixed here: one node, one GPU.
set -xeuo pipefail

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$RECIPES_DIR")
SMOKE_DIR=${SMOKE_DIR:-$PWD/smoke_run}
SMOKE_DIR=$(mkdir -p "$SMOKE_DIR" && cd "$SMOKE_DIR" && pwd)
ARMS=${ARMS:-gtpo grpo_no_kl grpo}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.3}
DRY_RUN=${DRY_RUN:-0}
TOTAL_STEPS=3
SAVE_STEP=2
TRAIN_PROBLEMS=64
TEST_PROBLEMS=16

for arm in $ARMS; do
    case $arm in
        gtpo | grpo_no_kl | grpo) ;;
        *) echo "ARMS may hold gtpo, grpo_no_kl and grpo, got '$arm'" >&2; exit 2 ;;
    esac
done

# 1. The tiny model and the problems, in verl's RL parquet with the paper's prompt (scripts/prepare_data.py).
python3 -m gtpo_plugin.smoke model "$SMOKE_DIR/model"
for split in train test; do
    count=$TRAIN_PROBLEMS seed=0
    [[ $split == test ]] && count=$TEST_PROBLEMS seed=1
    python3 -m gtpo_plugin.smoke problems "$SMOKE_DIR/data/problems_$split.jsonl" --count "$count" --seed "$seed"
    python3 "$REPO_DIR/scripts/prepare_data.py" --dataset gsm8k --source "$SMOKE_DIR/data/problems_$split.jsonl" \
        --split "$split" --output-dir "$SMOKE_DIR/data"
done

# 2. recipes/common.sh's settings for one GPU and the tiny model (fixed, whatever the environment says).
NNODES=1
GPUS_PER_NODE=1
MODEL_PATH=$SMOKE_DIR/model
DATASET=gsm8k
DATA_DIR=$SMOKE_DIR/data
TRAIN_FILES=$DATA_DIR/gsm8k/train.parquet
VAL_FILES=$DATA_DIR/gsm8k/test.parquet
MAX_PROMPT_LENGTH=256      # the prompt is about 150 tokens with the tiny tokenizer
MAX_RESPONSE_LENGTH=64
TRAIN_BATCH_SIZE=8         # 8 prompts x 8 completions a step, one optimizer step
PPO_MINI_BATCH_SIZE=8
MAX_TOKENS_PER_GPU=$((4 * (MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH)))
TOTAL_EPOCHS=1             # 8 steps an epoch; trainer.total_training_steps stops at 3
SAVE_FREQ=$SAVE_STEP       # checkpoints at step 2 and at the last step
TEST_FREQ=-1
ROLLOUT_TP=1
OFFLOAD=false
SP_SIZE=1
ENGINE=fsdp

SMOKE_ARGS=(
    trainer.total_training_steps="$TOTAL_STEPS"
    trainer.val_before_train=false
    "trainer.logger=[console,file]"
    actor_rollout_ref.rollout.enforce_eager=true
    # one agent-loop worker, one reward worker, one TransferQueue storage unit and no data-loader worker
    # processes (verl's defaults: 8 of each) for a quick start-up; the batches are tiny
    actor_rollout_ref.rollout.agent.num_workers=1
    reward.num_workers=1
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1
    data.dataloader_num_workers=0
)

# 3. Per arm: the first run (from scratch), then the run resumed from its step-2 checkpoint.
mkdir -p "$SMOKE_DIR/configs"
dry_run_pids=() dry_run_files=()
for arm in $ARMS; do
    ALGORITHM=$arm
    for run in first resumed; do
        EXPERIMENT_NAME=smoke_${arm}
        RUN_DIR=$SMOKE_DIR/runs/$arm/$run
        # shellcheck source=recipes/common.sh
        source "$RECIPES_DIR/common.sh"
        if [[ $run == first ]]; then
            RESUME_ARGS=(trainer.resume_mode=disable)
            [[ $DRY_RUN == 1 ]] || rm -rf "$SMOKE_DIR/runs/$arm"  # this script's own folder: start afresh
        else
            RESUME_ARGS=(trainer.resume_mode=resume_path
                         trainer.resume_from_path="$SMOKE_DIR/runs/$arm/first/checkpoints/global_step_$SAVE_STEP")
        fi
        command=(python3 -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG_DIR" --config-name "$ALGORITHM"
                 "${COMMON_ARGS[@]}" "${ENGINE_ARGS[@]}" "${SMOKE_ARGS[@]}" "${RESUME_ARGS[@]}" "$@")
        if [[ $DRY_RUN == 1 ]]; then  # print-only launches run side by side (each imports verl: seconds of CPU)
            "${command[@]}" "${DRY_RUN_ARGS[@]}" > "$SMOKE_DIR/configs/${arm}_$run.yaml" &
            dry_run_pids+=("$!") dry_run_files+=("$SMOKE_DIR/configs/${arm}_$run.yaml")
        else
            mkdir -p "$RUN_DIR"  # verl's file logger opens $RUN_DIR/metrics.jsonl without creating the folder
            "${command[@]}"
        fi
    done
done
if [[ $DRY_RUN == 1 ]]; then
    for i in "${!dry_run_pids[@]}"; do
        wait "${dry_run_pids[$i]}"  # a failed launch stops the script here (set -e)
        file=${dry_run_files[$i]}
        echo "# ---- $(basename "$file" .yaml): $file"
        cat "$file"
    done
    exit 0
fi

# 4. The checks and the table, from verl's metrics logs and checkpoints.
# shellcheck disable=SC2086  # ARMS is a list
python3 -m gtpo_plugin.smoke check "$SMOKE_DIR" --arms $ARMS --model "$SMOKE_DIR/model" \
    --total-steps "$TOTAL_STEPS" --save-step "$SAVE_STEP" | tee "$SMOKE_DIR/table.md"

#!/usr/bin/env bash
# Sample N_SAMPLES completions per prompt for one checkpoint with verl's generation entry point
# (verl.trainer.main_generation_server, vLLM servers behind Ray), then score them per dataset with
# gtpo-eval: accuracy, format consistency, pass@k and maj@k (GSM8K, MATH, AIME 2024/2025, AMC 2023).
#
# Launch (one node, GPUs with vLLM installed; MODEL_PATH is a Hugging Face model folder or hub id):
#   MODEL_PATH=/ckpt/gtpo_qwen3b_hf LABEL=gtpo bash recipes/eval/run_eval.sh
# From a verl FSDP checkpoint (merged to Hugging Face format first with verl.model_merger):
#   ACTOR_CKPT_DIR=checkpoints/gtpo/global_step_500/actor LABEL=gtpo bash recipes/eval/run_eval.sh
# Print verl's resolved generation config and exit (no Ray, no GPU):
#   DRY_RUN=1 bash recipes/eval/run_eval.sh
# Extra arguments are Hydra overrides for the generation, e.g. actor_rollout_ref.rollout.max_num_seqs=512.
# verl's generation sends only temperature, top_p and max_tokens (= MAX_RESPONSE_LENGTH) per request.
set -xeuo pipefail

DATA_DIR=${DATA_DIR:-$HOME/data/gtpo}
EVAL_FILES=${EVAL_FILES:-"['$DATA_DIR/gsm8k/test.parquet','$DATA_DIR/math/test.parquet','$DATA_DIR/aime2024/test.parquet','$DATA_DIR/aime2025/test.parquet','$DATA_DIR/amc2023/test.parquet']"}
LABEL=${LABEL:-gtpo}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/gtpo_eval/$LABEL}
ACTOR_CKPT_DIR=${ACTOR_CKPT_DIR:-}           # verl actor checkpoint to merge first (optional)
MERGE_BACKEND=${MERGE_BACKEND:-fsdp}          # fsdp or megatron, as the checkpoint was trained
if [[ -n $ACTOR_CKPT_DIR ]]; then
    MODEL_PATH=${MODEL_PATH:-$OUTPUT_DIR/hf_model}
else
    MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-3B-Instruct}
fi
SAMPLES_FILE=${SAMPLES_FILE:-$OUTPUT_DIR/samples.parquet}

N_SAMPLES=${N_SAMPLES:-8}                    # n completions per prompt: pass@k and maj@k need k <= n
TEMPERATURE=${TEMPERATURE:-1.0}              # the sampling temperature of training rollouts
TOP_P=${TOP_P:-1.0}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-1024}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-2048}
N_GPUS=${N_GPUS:-8}
NNODES=${NNODES:-1}
TP_SIZE=${TP_SIZE:-1}                        # one vLLM replica per TP_SIZE GPUs
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.85}
K_VALUES=${K_VALUES:-}                       # e.g. "1 4 8"; empty: powers of two up to n, and n
WORKERS=${WORKERS:-8}                        # processes checking answers with math-verify
DRY_RUN=${DRY_RUN:-0}

GENERATION_ARGS=(
    data.train_files="$EVAL_FILES"
    data.prompt_key=prompt
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    +data.output_path="$SAMPLES_FILE"
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n="$N_SAMPLES"
    actor_rollout_ref.rollout.temperature="$TEMPERATURE"
    actor_rollout_ref.rollout.top_p="$TOP_P"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$TP_SIZE"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    trainer.n_gpus_per_node="$N_GPUS"
    trainer.nnodes="$NNODES"
)

SCORE_ARGS=(score "$SAMPLES_FILE" --output-dir "$OUTPUT_DIR" --label "$LABEL" --workers "$WORKERS")
if [[ -n $K_VALUES ]]; then
    read -ra KS <<< "$K_VALUES"
    SCORE_ARGS+=(--k "${KS[@]}")
fi

if [[ $DRY_RUN == 1 ]]; then
    # main_generation_server imports vLLM's OpenAI client at import time, so on a machine without vLLM
    # it cannot even print its config. main_ppo's Hydra app composes the very same config (config_path
    # "config", config_name "ppo_trainer" under verl/trainer), and --cfg job prints it without running.
    python3 -m verl.trainer.main_ppo "${GENERATION_ARGS[@]}" "$@" --cfg job --resolve
    echo "DRY_RUN: would then run: python3 -m gtpo_plugin.evaluation ${SCORE_ARGS[*]}" >&2
    exit 0
fi

if [[ -n $ACTOR_CKPT_DIR && ! -e $MODEL_PATH/config.json ]]; then
    python3 -m verl.model_merger merge --backend "$MERGE_BACKEND" \
        --local_dir "$ACTOR_CKPT_DIR" --target_dir "$MODEL_PATH"
fi

python3 -m verl.trainer.main_generation_server "${GENERATION_ARGS[@]}" "$@"
python3 -m gtpo_plugin.evaluation "${SCORE_ARGS[@]}"

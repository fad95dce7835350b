# Shared by the launch scripts in recipes/ (sourced, not run): every setting that comes from the environment,
# with its default, and the Hydra overrides it turns into. The script sets ALGORITHM (gtpo, grpo or grpo_no_kl:
# the config in recipes/config/) and ENGINE (fsdp or megatron) before sourcing this file.
# The settings every arm shares (group size 8, lr 1e-6, max grad norm 0.1, loss aggregation) live in
# recipes/config/common.yaml, the preset's in recipes/config/preset/; change any with Hydra overrides after the
# script name.

RECIPE_CONFIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/config

# The preset: paper (default; the authors' 0/10/20 reward, advantages R - mean(R), temperature 0.9, gamma 0.1)
# or verl (0/1 correctness, std-normalised advantages, temperature 1, gamma 0.02). GTPO and its GRPO twins
# must run with the same preset; it is part of the default run name.
PRESET=${PRESET:-paper}
case $PRESET in
    paper | verl) ;;
    *) echo "PRESET must be paper or verl, got '$PRESET'" >&2; exit 2 ;;
esac
for override in "$@"; do
    if [[ $override =~ ^[+~]*preset(=|$) ]]; then
        echo "set the preset with PRESET=paper|verl, not the Hydra override '$override' (the run name follows PRESET)" >&2
        exit 2
    fi
done

# Cluster: GPUs per node times nodes; the nodes join one Ray cluster first (recipes/README.md).
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}

# Model and data (scripts/prepare_data.py writes $DATA_DIR/<dataset>/{train,test}.parquet).
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-3B-Instruct}   # or meta-llama/Llama-3.1-8B-Instruct, or a local folder
DATASET=${DATASET:-gsm8k}                            # gsm8k or math
DATA_DIR=${DATA_DIR:-$HOME/data/gtpo}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/$DATASET/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/$DATASET/test.parquet}  # a Hydra list adds more: "['a.parquet','b.parquet']"
case $DATASET in
    gsm8k) default_prompt_length=512 default_response_length=1024 ;;
    math) default_prompt_length=1024 default_response_length=2048 ;;
    *) echo "DATASET must be gsm8k or math, got '$DATASET'" >&2; exit 2 ;;
esac
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-$default_prompt_length}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-$default_response_length}

# Batches, in prompts (each prompt gets a group of 8 completions): TRAIN_BATCH_SIZE / PPO_MINI_BATCH_SIZE
# optimizer steps per batch. Micro-batches are packed by tokens, MAX_TOKENS_PER_GPU per forward pass.
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-128}
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-64}
MAX_TOKENS_PER_GPU=${MAX_TOKENS_PER_GPU:-$((4 * (MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH)))}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-10}
SAVE_FREQ=${SAVE_FREQ:-50}
TEST_FREQ=${TEST_FREQ:-10}

# vLLM rollouts: one replica per ROLLOUT_TP GPUs.
ROLLOUT_TP=${ROLLOUT_TP:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}

# Training engine. OFFLOAD moves the actor's parameters and optimizer state to CPU between phases.
OFFLOAD=${OFFLOAD:-false}
ACTOR_TP=${ACTOR_TP:-2}   # Megatron tensor parallel size (the reference model, when loaded, follows the actor)
ACTOR_PP=${ACTOR_PP:-1}   # Megatron pipeline parallel size
SP_SIZE=${SP_SIZE:-1}     # FSDP Ulysses sequence parallel size
# The bridge verl's Megatron engine builds its model with: true selects mbridge, which the package's megatron
# extra installs; false selects verl's default, Megatron-Bridge (verl pins megatron-bridge==0.5.2), on a cluster
# whose image has it.
VANILLA_MBRIDGE=${VANILLA_MBRIDGE:-true}

# Seed of the data order (verl's data.seed: unset there, the order differs from run to run) and of vLLM's
# sampling. The arms of an A/B with the same SEED see the same prompts in the same order; repeat with SEED=1, 2, ...
# for seeds, which scripts/compare_runs.py pairs by the _s<SEED> ending of the run names.
SEED=${SEED:-0}
if [[ ! $SEED =~ ^[0-9]+$ ]]; then
    echo "SEED must be a non-negative integer, got '$SEED'" >&2
    exit 2
fi

# Outputs: checkpoints, verl's file-logger metrics (what scripts/compare_runs.py reads) and tensorboard events.
EXPERIMENT_NAME=${EXPERIMENT_NAME:-${ALGORITHM}_${PRESET}_${DATASET}_$(basename "$MODEL_PATH")_${ENGINE}_s${SEED}}
RUN_DIR=${RUN_DIR:-$PWD/runs/$EXPERIMENT_NAME}

# DRY_RUN=1: print verl's fully resolved config and exit; Hydra stops before verl's task (no Ray, no GPU).
DRY_RUN=${DRY_RUN:-0}

COMMON_ARGS=(
    preset="$PRESET"
    data.train_files="$TRAIN_FILES"
    data.val_files="$VAL_FILES"
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    data.train_batch_size="$TRAIN_BATCH_SIZE"
    data.seed="$SEED"
    actor_rollout_ref.rollout.seed="$SEED"
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.actor.ppo_mini_batch_size="$PPO_MINI_BATCH_SIZE"
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$GPUS_PER_NODE"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.default_local_dir="$RUN_DIR/checkpoints"
    trainer.total_epochs="$TOTAL_EPOCHS"
    trainer.save_freq="$SAVE_FREQ"
    trainer.test_freq="$TEST_FREQ"
    # The trainer runs in a Ray actor: it sees these through Ray's runtime environment, on any node.
    +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$RUN_DIR/metrics.jsonl"
    +ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR="$RUN_DIR/tensorboard"
)

# The reference-model keys are used only when a KL term loads one (grpo); set for every arm so they match.
# verl's FSDP engine always keeps a reference model's parameters in CPU memory; Megatron's does when asked.
case $ENGINE in
    fsdp)
        ENGINE_ARGS=(
            actor_rollout_ref.actor.fsdp_config.param_offload="$OFFLOAD"
            actor_rollout_ref.actor.fsdp_config.optimizer_offload="$OFFLOAD"
            actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size="$SP_SIZE"
            actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size="$SP_SIZE"
        )
        ;;
    megatron)
        ENGINE_ARGS=(
            model_engine=megatron
            actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$ACTOR_TP"
            actor_rollout_ref.actor.megatron.pipeline_model_parallel_size="$ACTOR_PP"
            actor_rollout_ref.actor.megatron.vanilla_mbridge="$VANILLA_MBRIDGE"
            actor_rollout_ref.actor.megatron.param_offload="$OFFLOAD"
            actor_rollout_ref.actor.megatron.optimizer_offload="$OFFLOAD"
            actor_rollout_ref.ref.megatron.param_offload=true
        )
        ;;
    *) echo "ENGINE must be fsdp or megatron, got '$ENGINE'" >&2; exit 2 ;;
esac

if [[ $DRY_RUN == 1 ]]; then
    DRY_RUN_ARGS=(--cfg job --resolve)
    # A YAML comment above verl's config, so the printed file says which preset made it.
    echo "# PRESET=$PRESET: recipes/config/preset/$PRESET.yaml (reward, advantage normalisation, temperature, gamma)"
else
    DRY_RUN_ARGS=()
    for file in "$TRAIN_FILES" "$VAL_FILES"; do
        if [[ $file != *[\[:]* && ! -f $file ]]; then  # plain local paths only, not lists or hdfs:// URLs
            echo "missing data file $file: write it with python3 scripts/prepare_data.py (see recipes/README.md)" >&2
            exit 1
        fi
    done
fi

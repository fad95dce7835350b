#!/usr/bin/env bash
# The GPU check, for a lent GPU machine without network (../shared/gpu/README.md): everything it lacks
# travels as the bundle scripts/gpu_bundle.py builds here (verl 0.9.1 and its dependencies, Ray without its
# Java jars, hydra, TransferQueue, transformers 5.9.0 with tokenizers 0.22.2, the smoke run's tiny model, data
# and resolved configs), in pieces that each fit one call next to the working tree: one call per piece
# (build/gpu_bundle/call-NN), back to back; each unpacks its piece, and the call that brings the last one runs
# the check (docs/gpu-check.md).
#
#   DRY_RUN=1 bash scripts/gpu_check.sh      # here or in CI (CPU, network): build the bundle, check it, print the plan
#   bash scripts/gpu_check.sh                # on the GPU machine, carrying build/gpu_bundle/call-NN
#
# On the GPU, in this order, each step under its own time limit so that what ran comes back:
#   1. install the bundle (Python's tarfile) and check the machine's packages against what it leaves to them;
#   2. verl's own main_ppo start-up and fit() on CUDA (tests/verl_adapter/fsdp_fit_run.py --device cuda: FSDP,
#      bf16 autocast, use_remove_padding=true, attn_implementation=sdpa, the transformers rollout hf of the CPU
#      tests),
#      for GTPO, GRPO without KL and GRPO with its reference model: 3 steps with a checkpoint at step 2 (the
#      three arms one after the other), then a run resumed from it (the three side by side);
#   3. the smoke report (python -m gtpo_plugin.smoke check): every gtpo/* key finite, <H>_ini kept on resume,
#      and the table of step time and peak GPU memory per arm;
#   4. scripts/bench_core.py --device cuda;  5. one gtpo-demo --device cuda.
# Outputs (logs, metrics, table.md, bench.txt, demo/) go to $OUT (the device tool's folder) or ./gpu_check_out.
# The plan aims at 8 minutes of device time (unmeasured there); the vLLM variant (about 4 calls) is described
# in docs/gpu-check.md.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${BUNDLE:-$REPO_DIR/build/gpu_bundle}
PYTHON=${PYTHON:-python3}
# gpu_bundle.SMOKE_DIR's parent, where the configs name their paths (only tests/test_gpu_check_flow.py moves it)
TARGET=${GTPO_GPU_CHECK_TARGET:-/tmp/gtpo-gpu-check}
ARMS=(gtpo grpo_no_kl grpo)

if [[ ${DRY_RUN:-0} == 1 ]]; then
    "$PYTHON" "$REPO_DIR/scripts/gpu_bundle.py" build --out "$BUNDLE"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    "$PYTHON" "$REPO_DIR/scripts/gpu_bundle.py" install "$BUNDLE" --target "$scratch" --no-machine-check
    echo "on the GPU, call k: bash scripts/gpu_check.sh, carrying ${BUNDLE#"$REPO_DIR"/}/call-0k (the last one runs)"
    echo "then: fit() on cuda for ${#ARMS[@]} arms (3 steps each, one arm at a time; then the resumed runs side by side), the smoke report, bench_core, gtpo-demo"
    exit 0
fi

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT/logs"
exec > >(tee "$OUT/gpu_check.log") 2>&1
started=$SECONDS
step() { echo "== $(date -u +%H:%M:%S) (+$((SECONDS - started)) s) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step "install the bundle"
installed=0
timeout 120 "$PYTHON" "$REPO_DIR/scripts/gpu_bundle.py" install "$BUNDLE" --target "$TARGET" || installed=$?
if [[ $installed == 3 ]]; then  # a bundle of several calls: this call brought one piece, the next brings more
    exit 0
elif [[ $installed != 0 ]]; then
    exit "$installed"
fi
# the repository first (gtpo_plugin, the runner), then the bundle: verl, Ray, transformers 5.9.0, ...
export PYTHONPATH=$REPO_DIR:$REPO_DIR/tests:$TARGET/site
SMOKE_DIR=$TARGET/smoke_run
"$PYTHON" -c "import verl, ray, transformers, transfer_queue; print('verl', verl.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__)"

status=0
fit() {  # fit ARM RUN: one main_ppo run under its time limit; its log and metrics.jsonl go to $OUT/logs
    local arm=$1 run=$2 rc=0
    mkdir -p "$SMOKE_DIR/runs/$arm/$run"
    [[ $run == first ]] && rm -rf "${SMOKE_DIR:?}/runs/$arm/first"/*
    timeout 150 "$PYTHON" "$REPO_DIR/tests/verl_adapter/fsdp_fit_run.py" --device cuda \
        "$SMOKE_DIR/configs/${arm}_$run.yaml" > "$OUT/logs/${arm}_$run.log" 2>&1 || rc=$?
    cp "$SMOKE_DIR/runs/$arm/$run/metrics.jsonl" "$OUT/logs/${arm}_$run.metrics.jsonl" 2>/dev/null || true
    return $rc
}
failed() {  # failed ARM RUN EXIT_STATUS
    echo "FAILED (exit $3): $1 $2 (tail of $OUT/logs/${1}_$2.log):"
    tail -n 40 "$OUT/logs/${1}_$2.log"
    status=1
}
# The first runs one at a time: their step times make the table. The resumed runs (the resume itself and
# <H>_ini kept) side by side, each in its own Ray instance: peak GPU memory is counted per process.
for arm in "${ARMS[@]}"; do
    step "fit: $arm first"
    fit "$arm" first || failed "$arm" first $?
done
step "fit: ${ARMS[*]} resumed, side by side"
pids=()
for arm in "${ARMS[@]}"; do
    fit "$arm" resumed &
    pids+=($!)
done
for i in "${!ARMS[@]}"; do
    wait "${pids[$i]}" || failed "${ARMS[$i]}" resumed $?
done

step "smoke report"
timeout 60 "$PYTHON" -m gtpo_plugin.smoke check "$SMOKE_DIR" --arms "${ARMS[@]}" --model "$SMOKE_DIR/model" \
    | tee "$OUT/table.md" || status=1

step "bench_core on cuda"
timeout 90 "$PYTHON" "$REPO_DIR/scripts/bench_core.py" --device cuda | tee "$OUT/bench.txt" || status=1

step "gtpo-demo on cuda"
timeout 120 "$PYTHON" -m gtpo_plugin.demo --device cuda --out "$OUT/demo" --no-progress \
    > "$OUT/logs/demo.log" 2>&1 || { tail -n 20 "$OUT/logs/demo.log"; status=1; }
tail -n 15 "$OUT/logs/demo.log"

step "done, status $status"
exit $status

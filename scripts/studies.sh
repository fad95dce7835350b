#!/usr/bin/env bash
# Regenerate every committed measurement in docs/: the GTPO-vs-GRPO studies with the null arm (preset
# paper, 8 seeds; preset verl, 4 seeds), the ablations (4 seeds, both presets) and the stress sweep
# (4 seeds), and the regime studies (8 seeds, 200 RL steps each: format-fragile, negative-heavy, and
# long at lr 3e-4 and 1e-3 with the no-filter ablation). Finished runs are kept in $CACHE and reused
# (runs are deterministic on CPU), so the ablations and the sweep do not train again what a study trained.
# Usage: bash scripts/studies.sh   (JOBS processes at a time, one CPU thread each; 84 runs of ~10 CPU-seconds,
#        then 112 regime runs of 200 steps; REGIMES_ONLY=1 runs only the regime studies)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-.demo_cache}
JOBS=${JOBS:-3}
PYTHON=${PYTHON:-python}
if [ -z "${REGIMES_ONLY:-}" ]; then
$PYTHON -m gtpo_plugin.demo --preset paper --seeds 8 --arms gtpo,grpo,null --jobs "$JOBS" --cache "$CACHE" \
    --no-progress --out docs/study_paper
$PYTHON -m gtpo_plugin.demo --preset verl --seeds 4 --arms gtpo,grpo,null --jobs "$JOBS" --cache "$CACHE" \
    --no-progress --out docs/study_verl
$PYTHON scripts/stress.py --lrs 3e-4,3e-3 --seeds 4 --jobs "$JOBS" --cache "$CACHE" --out docs/stress
$PYTHON scripts/ablations.py --seeds 4 --jobs "$JOBS" --cache "$CACHE" --out docs/ablations
fi
regime() { $PYTHON -m gtpo_plugin.demo --seeds 8 --jobs "$JOBS" --cache "$CACHE" --no-progress "$@"; }
regime --regime format-fragile --arms gtpo,grpo,null --out docs/format-fragile
regime --regime long --lr 1e-3 --arms gtpo,grpo,null,nofilter --out docs/long-lr1e-3
regime --regime negative-heavy --arms gtpo,grpo,null --out docs/negative-heavy
regime --regime long --arms gtpo,grpo,null,nofilter --out docs/long

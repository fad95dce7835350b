#!/usr/bin/env bash
# Regenerate every committed measurement in docs/: the GTPO-vs-GRPO studies with the null arm (preset
# paper, 8 seeds; preset verl, 4 seeds), the ablations (4 seeds, both presets) and the stress sweep
# (4 seeds). Finished runs are kept in $CACHE and reused (runs are deterministic on CPU), so the
# ablations and the sweep do not train again what a study already trained.
# Usage: bash scripts/studies.sh   (JOBS processes at a time, one CPU thread each; 84 runs of ~10 CPU-seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-.demo_cache}
JOBS=${JOBS:-3}
PYTHON=${PYTHON:-python}
$PYTHON -m gtpo_plugin.demo --preset paper --seeds 8 --arms gtpo,grpo,null --jobs "$JOBS" --cache "$CACHE" \
    --no-progress --out docs/study_paper
$PYTHON -m gtpo_plugin.demo --preset verl --seeds 4 --arms gtpo,grpo,null --jobs "$JOBS" --cache "$CACHE" \
    --no-progress --out docs/study_verl
$PYTHON scripts/stress.py --lrs 3e-4,3e-3 --seeds 4 --jobs "$JOBS" --cache "$CACHE" --out docs/stress
$PYTHON scripts/ablations.py --seeds 4 --jobs "$JOBS" --cache "$CACHE" --out docs/ablations

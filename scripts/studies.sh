#!/usr/bin/env bash
# Regenerate the demo's studies committed in docs/, each with the null arm, 8 seeds, and pass@1 measured every
# 12 (default regime) or 50 (negative-heavy) RL steps for its peak: preset paper, preset verl; then the
# negative-heavy regime (6-7 operands, 200 RL steps of 2 prompts; its metrics.json is committed gzipped as
# docs/negative-heavy/metrics.json.gz). Finished runs are kept in $CACHE and reused
# (runs are deterministic on CPU). The ablations (scripts/ablations.py), the learning-rate sweep
# (scripts/stress.py) and the other regimes have not been re-run on the 1,500-step warm-up.
# Usage: bash scripts/studies.sh   (JOBS processes at a time, one CPU thread each: 48 runs of about 40 CPU-seconds,
#        then 24 regime runs of 200 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-.demo_cache}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python}
study() { $PYTHON -m gtpo_plugin.demo --seeds 8 --arms gtpo,grpo,null --jobs "$JOBS" --cache "$CACHE" --no-progress "$@"; }
study --preset paper --eval-every 12 --out docs/study_paper
study --preset verl --eval-every 12 --out docs/study_verl
study --regime negative-heavy --eval-every 50 --out docs/negative-heavy
gzip -9f docs/negative-heavy/metrics.json  # 6.8 MB as JSON

#!/usr/bin/env bash
# The throughput issue's end-to-end budget, timed: a 64-trial search on ogbg-molhiv (up to
# 50 epochs per trial, Hyperband pruning), then the OGB 10-seed evaluation of its best
# config. Target: both within 10 minutes of one H100. Writes timings and the study under
# $OUT/search (default bench/results/search).
# Usage: bench/search_budget.sh [FOLDER_WITH_HIV.csv.gz] [WORKERS] [extra search flags...]
#   e.g. bench/search_budget.sh .gpu-data 4 --cuda-graphs --precision bf16 --batch-size 1024
# A CPU smoke run: DATASET=ogbg-molbbbp TRIALS=2 EPOCHS=1 bench/search_budget.sh ../shared/data/moleculenet 1 --space quick
set -euo pipefail
source=${1:-../shared/data/moleculenet}; workers=${2:-4}; shift 2 || true
out=${OUT:-bench/results}/search
mkdir -p "$out"
export GGT_SEARCH_CACHE=${GGT_SEARCH_CACHE:-/tmp/ggt-cache}
storage=sqlite:///$out/search.db
ggt() { python3 -m ggt_search.cli "$@"; }
{
  start=$(date +%s)
  ggt search --study hiv-budget --dataset "${DATASET:-ogbg-molhiv}" --source "$source" --trials "${TRIALS:-64}" --epochs "${EPOCHS:-50}" \
    --pruner hyperband --workers "$workers" --storage "$storage" "$@"
  searched=$(date +%s)
  ggt evaluate --from-study hiv-budget --storage "$storage" --seeds 0-9 --workers "$workers" --out "$out/final" --source "$source"
  done_=$(date +%s)
  echo "search: $((searched - start)) s; 10-seed evaluation: $((done_ - searched)) s; total: $((done_ - start)) s"
} 2>&1 | tee "$out/log.txt"

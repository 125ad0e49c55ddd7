#!/usr/bin/env bash
# The GPU check, as one script (see ../shared/gpu/README.md): throughput of the
# reference default model on ogbg-molhiv, fast path vs PyG, bf16 at batch 1024, and
# K concurrent trainings. Writes JSON/Markdown under $OUT (default bench/results).
# Usage: bench/gpu.sh [FOLDER_WITH_HIV.csv.gz]
set -euo pipefail
source=${1:-../shared/data/moleculenet}
out=${OUT:-bench/results}
mkdir -p "$out"
export GGT_SEARCH_CACHE=${GGT_SEARCH_CACHE:-/tmp/ggt-cache}
bench() { python3 -m ggt_search.cli bench --dataset ogbg-molhiv --source "$source" --device cuda "$@"; }
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  bench --batch-size 256 --out "$out/b256-fp32"
  bench --batch-size 1024 --precision bf16 --no-baseline --out "$out/b1024-bf16"
  bench --batch-size 256 --no-baseline --concurrent 4 --out "$out/b256-x4"
} 2>&1 | tee "$out/log.txt"

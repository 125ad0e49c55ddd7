#!/usr/bin/env bash
# The GPU check, as one script (see ../shared/gpu/README.md and bench/NOTES.md):
#  1. the CUDA tests (CUDA-graph steps equal eager steps; no host sync inside an epoch);
#  2. throughput of the reference default model on ogbg-molhiv: eager fast path vs PyG,
#     then CUDA-graph steps at batch 256 (fp32) and 1024/4096 (bf16), each profiled
#     (wall vs device time per step, kernel launches, syncs); then the same with the
#     forward torch.compile'd (inductor's fused kernels, captured in the CUDA graphs);
#  3. K = 4 concurrent trainings with CUDA graphs.
# Writes JSON, Markdown and profiles under $OUT (default bench/results).
# Usage: bench/gpu.sh [FOLDER_WITH_HIV.csv.gz_AND_BBBP.csv]
set -uo pipefail
source=${1:-../shared/data/moleculenet}
out=${OUT:-bench/results}
mkdir -p "$out"
export GGT_SEARCH_CACHE=${GGT_SEARCH_CACHE:-/tmp/ggt-cache} GGT_MOLECULENET=$source
bench() { python3 -m ggt_search.cli bench --dataset ogbg-molhiv --source "$source" --device cuda "$@"; }
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -m pytest -q -p no:cacheprovider tests/test_throughput.py
  bench --batch-size 256 --profile --out "$out/b256-fp32"
  bench --batch-size 256 --cuda-graphs --profile --no-baseline --out "$out/b256-fp32-graphs"
  bench --batch-size 1024 --precision bf16 --cuda-graphs --profile --no-baseline --out "$out/b1024-bf16-graphs"
  bench --batch-size 4096 --precision bf16 --cuda-graphs --profile --no-baseline --out "$out/b4096-bf16-graphs"
  bench --batch-size 256 --compile --cuda-graphs --profile --no-baseline --out "$out/b256-fp32-compiled-graphs"
  bench --batch-size 1024 --precision bf16 --compile --cuda-graphs --profile --no-baseline --out "$out/b1024-bf16-compiled-graphs"
  bench --batch-size 256 --cuda-graphs --no-baseline --concurrent 4 --out "$out/b256-graphs-x4"
} 2>&1 | tee "$out/log.txt"

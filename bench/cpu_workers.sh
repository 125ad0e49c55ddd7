#!/usr/bin/env bash
# CPU worker scaling: the same 4-seed evaluation with 1 worker (all cores) and with 2
# workers (one core's share each), timed end to end. Usage: bash bench/cpu_workers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
common=(evaluate --dataset nci-tpsa --device cpu --layers 3 --hidden 64 --pooling sum --epochs 10 --seeds 0-3)
for workers in 1 2; do
  start=$(date +%s%N)
  .venv/bin/ggt-search "${common[@]}" --workers "$workers" --out "$out/w$workers" > /dev/null
  echo "workers=$workers seconds=$(( ($(date +%s%N) - start) / 1000000000 ))"
done
rm -rf "$out"

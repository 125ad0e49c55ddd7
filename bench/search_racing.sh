#!/usr/bin/env bash
# Issue 23.5: does a search over several seeds, raced, or a confirmed winner pay at this scale?
# On two sets of the CPU suite, at equal total training epochs (12 trials x 25 epochs = 4 trials x
# 3 seeds x 25 epochs), each answer evaluated over 10 fresh seeds on test at the end:
#   k1        12 trials, one seed each: the plain best trial (today's default)
#   k3        4 trials x 3 seeds, raced (--race-p 0.3: two seeds, both worse, stop a trial; at the
#             default 0.1 a race needs 4 shared seeds, so it acts with 5 seeds per trial or more)
#   confirmed k1's study, its 3 best retrained on 5 fresh seeds (15 x 25 epochs more), the confirmed winner
# Writes the studies, the evaluations and results.md under $OUT (default bench/results/search-racing).
# Usage: bench/search_racing.sh [MOLECULENET_FOLDER] [WORKERS]
set -euo pipefail
source=${1:-../shared/data/moleculenet}; workers=${2:-1}
out=${OUT:-bench/results}/search-racing
mkdir -p "$out"
export GGT_SEARCH_CACHE=${GGT_SEARCH_CACHE:-/tmp/ggt-cache}
storage=sqlite:///$out/studies.db
ggt() { python3 -m ggt_search.cli "$@"; }
common=(--space quick --epochs 25 --pruner hyperband --device cpu --storage "$storage" --workers "$workers" --source "$source")
final=(--storage "$storage" --seeds 100-109 --workers "$workers" --source "$source")
{
  for dataset in ogbg-molbbbp ogbg-molesol; do
    name=${dataset#ogbg-mol}
    ggt search --study "$name-k1" --dataset "$dataset" --trials 12 "${common[@]}"
    ggt evaluate --from-study "$name-k1" --out "$out/$name-k1" "${final[@]}"
    ggt search --study "$name-k3" --dataset "$dataset" --trials 4 --seeds-per-trial 3 --race-p 0.3 "${common[@]}"
    ggt evaluate --from-study "$name-k3" --out "$out/$name-k3" "${final[@]}"
    ggt search --study "$name-k1" --dataset "$dataset" --trials 12 --confirm-top 3 --confirm-seeds 5 "${common[@]}"
    ggt evaluate --from-study "$name-k1" --out "$out/$name-confirmed" "${final[@]}"
  done
  python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| set | answer | valid (10 seeds) | test (10 seeds) |", "|---|---|---|---|"]
for summary in sorted(out.glob("*/summary.json")):
    s = json.loads(summary.read_text())
    name, _, answer = summary.parent.name.partition("-")
    lines.append(f"| {name} | {answer} | {s['valid']['mean']:.4f} ± {s['valid']['std']:.4f} | "
                 f"{s['test']['mean']:.4f} ± {s['test']['std']:.4f} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
} 2>&1 | tee "$out/log.txt"

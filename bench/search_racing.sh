#!/usr/bin/env bash
# Issue 23.5: does a search over several seeds, raced, or a confirmed winner pay at this scale?
# On two sets of the CPU suite, at equal total training epochs (12 trials x 25 epochs = 4 trials x
# 3 seeds x 25 epochs), each answer evaluated over 10 fresh seeds on test at the end:
#   k1        12 trials, one seed each: the plain best trial (today's default)
#   k3        4 trials x 3 seeds, raced (--race-p 0.3: two seeds, both worse, stop a trial; at the
#             default 0.1 a race needs 4 shared seeds, so it acts with 5 seeds per trial or more)
#   confirmed k1's study, its 3 best retrained on 5 fresh seeds (15 x 25 epochs more), the confirmed winner
# Two answers with the same config share one evaluation (the runs are identical, so it is copied,
# not retrained). One search per answer and set: the table's differences hold for these searches,
# not for searches in general (search-to-search variance is not measured here).
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

# evaluate STUDY ANSWER: the study's answer over the final seeds, in $out/ANSWER
evaluate() {
  local key
  key=$(python3 - "$1" "$storage" <<'PY' | tail -1
import hashlib, json, sys
from ggt_search.study import best_config
config = best_config(sys.argv[1], sys.argv[2]).to_dict()
config["train"].pop("seed", None)
print(hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12])
PY
)
  mkdir -p "$out/configs"
  if [[ -f $out/configs/$key && ! -e $out/$2 ]]; then
    echo "$2: the same config as $(cat "$out/configs/$key"); its evaluation is copied"
    cp -r "$out/$(cat "$out/configs/$key")" "$out/$2"
  fi
  [[ -f $out/configs/$key ]] || echo "$2" > "$out/configs/$key"
  echo "$1" > "$out/$2.study"
  ggt evaluate --from-study "$1" --out "$out/$2" "${final[@]}"
}

{
  for dataset in ogbg-molbbbp ogbg-molesol; do
    name=${dataset#ogbg-mol}
    ggt search --study "$name-k1" --dataset "$dataset" --trials 12 "${common[@]}"
    evaluate "$name-k1" "$name-k1"
    ggt search --study "$name-k3" --dataset "$dataset" --trials 4 --seeds-per-trial 3 --race-p 0.3 "${common[@]}"
    evaluate "$name-k3" "$name-k3"
    ggt search --study "$name-k1" --dataset "$dataset" --trials 12 --confirm-top 3 --confirm-seeds 5 "${common[@]}"
    evaluate "$name-k1" "$name-confirmed"
  done
  python3 - "$out" "$storage" <<'PY'
import hashlib, json, sys
from pathlib import Path

import optuna
from scipy import stats

optuna.logging.set_verbosity(optuna.logging.WARNING)
out, storage = Path(sys.argv[1]), sys.argv[2]

def epochs(study_name):
    """Training epochs the study spent: every reported step of every trial (pruned ones included)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))

def evaluation(answer):
    """An answer's 10-seed summary, its test score by seed and its config's id (the seed aside)."""
    summary = json.loads((out / answer / "summary.json").read_text())
    config = dict(summary["config"], train={k: v for k, v in summary["config"]["train"].items() if k != "seed"})
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return summary, {int(s): r["test"] for s, r in summary["per_seed"].items()}, key

lines = ["| set | answer | epochs trained | config | valid (10 seeds) | test (10 seeds) | test - k1, paired (95% CI) |",
         "|---|---|---|---|---|---|---|"]
for name in ("bbbp", "esol"):
    seen = {}
    _, k1, _ = evaluation(f"{name}-k1")
    for answer in ("k1", "k3", "confirmed"):
        summary, test, key = evaluation(f"{name}-{answer}")
        spent = {"k1": epochs(f"{name}-k1"), "k3": epochs(f"{name}-k3"),
                 "confirmed": epochs(f"{name}-k1") + epochs(f"{name}-k1--confirm")}[answer]
        config = f"{key} (= {seen[key]})" if key in seen else key
        seen.setdefault(key, answer)
        d = [test[s] - k1[s] for s in sorted(k1)]
        if answer == "k1":
            diff = "-"
        elif max(d) == min(d):
            diff = f"{d[0]:+.4f}"
        else:
            lo, hi = stats.ttest_1samp(d, 0).confidence_interval()
            diff = f"{sum(d) / len(d):+.4f} ({lo:+.4f}, {hi:+.4f})"
        lines.append(f"| {name} | {answer} | {spent} | {config} | {summary['valid']['mean']:.4f} ± {summary['valid']['std']:.4f} | "
                     f"{summary['test']['mean']:.4f} ± {summary['test']['std']:.4f} | {diff} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
} 2>&1 | tee "$out/log.txt"

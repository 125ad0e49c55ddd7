#!/usr/bin/env bash
# Issue 23.5: does a search over several seeds, raced, or a confirmed winner pay at this scale?
# On two sets of the CPU suite, at equal total training epochs (12 trials x 25 epochs = 4 trials x
# 3 seeds x 25 epochs), each answer evaluated over 10 fresh seeds on test at the end:
#   k1        12 trials, one seed each: the plain best trial (today's default)
#   k3        4 trials x 3 seeds, raced (--race-p 0.3: two seeds, both worse, stop a trial; at the
#             default 0.1 a race needs 4 shared seeds, so it acts with 5 seeds per trial or more)
#   confirmed k1's study, its 3 best retrained on 5 fresh seeds (15 x 25 epochs more), the confirmed winner
# Each search is repeated with search seeds 0..REPLICATES-1 (--seed: the sampler and the trials' training
# seeds), so the table shows how much the answer varies from one search to the next, not only between
# the seeds of one answer. Replicate 0's studies have the plain names (bbbp-k1); replicate r's end in -rR.
# Two answers with the same config share one evaluation (the runs are identical, so it is copied,
# not retrained).
# Writes the studies, the evaluations and results.md under $OUT (default bench/results/search-racing).
# Usage: bench/search_racing.sh [MOLECULENET_FOLDER] [WORKERS] [REPLICATES]
set -euo pipefail
source=${1:-../shared/data/moleculenet}; workers=${2:-1}; replicates=${3:-3}
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
  for replicate in $(seq 0 $((replicates - 1))); do
    suffix=$([[ $replicate == 0 ]] || echo "-r$replicate")
    for dataset in ogbg-molbbbp ogbg-molesol; do
      name=${dataset#ogbg-mol}
      k1=$name-k1$suffix; k3=$name-k3$suffix; at=(--dataset "$dataset" --seed "$replicate" "${common[@]}")
      ggt search --study "$k1" --trials 12 "${at[@]}"
      evaluate "$k1" "$k1"
      ggt search --study "$k3" --trials 4 --seeds-per-trial 3 --race-p 0.3 "${at[@]}"
      evaluate "$k3" "$k3"
      ggt search --study "$k1" --trials 12 --confirm-top 3 --confirm-seeds 5 "${at[@]}"
      evaluate "$k1" "$name-confirmed$suffix"
    done
  done
  python3 - "$out" "$storage" "$replicates" <<'PY'
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

replicates = int(sys.argv[3])
lines = ["| set | answer | search | epochs trained | config | valid (10 seeds) | test (10 seeds) | test - k1 (paired seeds, 95% CI) |",
         "|---|---|---|---|---|---|---|---|"]
summary_lines = ["| set | answer | test, mean over searches | test - k1, mean over searches (95% CI) | against k1, by search |",
                 "|---|---|---|---|---|"]
for name in ("bbbp", "esol"):
    by_answer = {answer: [] for answer in ("k1", "k3", "confirmed")}
    for replicate in range(replicates):
        suffix = f"-r{replicate}" if replicate else ""
        seen = {}
        _, k1, _ = evaluation(f"{name}-k1{suffix}")
        for answer in ("k1", "k3", "confirmed"):
            summary, test, key = evaluation(f"{name}-{answer}{suffix}")
            k1_study = f"{name}-k1{suffix}"
            spent = {"k1": epochs(k1_study), "k3": epochs(f"{name}-k3{suffix}"),
                     "confirmed": epochs(k1_study) + epochs(f"{k1_study}--confirm")}[answer]
            config = f"{key} (= {seen[key]})" if key in seen else key
            seen.setdefault(key, answer)
            d = [test[s] - k1[s] for s in sorted(k1)]
            by_answer[answer].append((summary["test"]["mean"], sum(d) / len(d)))
            if answer == "k1":
                diff = "-"
            elif max(d) == min(d):
                diff = f"{d[0]:+.4f}"
            else:
                lo, hi = stats.ttest_1samp(d, 0).confidence_interval()
                diff = f"{sum(d) / len(d):+.4f} ({lo:+.4f}, {hi:+.4f})"
            lines.append(f"| {name} | {answer} | {replicate} | {spent} | {config} | "
                         f"{summary['valid']['mean']:.4f} ± {summary['valid']['std']:.4f} | "
                         f"{summary['test']['mean']:.4f} ± {summary['test']['std']:.4f} | {diff} |")
    higher = summary["metric"] not in ("rmse", "mae")  # ROC-AUC up, errors down
    for answer, values in by_answer.items():
        tests, diffs = zip(*values)
        mean_test = sum(tests) / len(tests)
        if answer == "k1":
            summary_lines.append(f"| {name} | k1 | {mean_test:.4f} | - | - |")
            continue
        mean_diff = sum(diffs) / len(diffs)
        interval = ("" if len(diffs) < 2 or max(diffs) == min(diffs)
                    else " ({:+.4f}, {:+.4f})".format(*stats.ttest_1samp(diffs, 0).confidence_interval()))
        better = sum((d > 0) == higher and d != 0 for d in diffs)
        same = sum(d == 0 for d in diffs)  # the same config as k1's answer
        summary_lines.append(f"| {name} | {answer} | {mean_test:.4f} | {mean_diff:+.4f}{interval} | "
                             f"{better} better, {same} the same config, {len(diffs) - better - same} worse |")
lines = summary_lines + ["", "Each search:", ""] + lines
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
} 2>&1 | tee "$out/log.txt"

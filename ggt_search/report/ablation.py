"""An ablation's sections of a report (one study per dataset, reported together): per dataset and
variant, validation and test over seeds; the paired difference to the baseline over matching seeds
with its 95% t-interval and the family-adjusted interval, paired t-test and Wilcoxon p-values,
Holm-corrected over every comparison of the report, and what the seeds could detect (power); a
verdict that never claims more than the runs support; learning curves; ranks within (dataset, seed)
cells; every run left out, with its reason. Ablations are final evaluations of fixed configs, so
their sections show test scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from ggt_search.ablate import BASELINE, chosen_learning_rates, run_key, same_code
from ggt_search.errors import UserError
from ggt_search.metrics import WIDEST_DIFFERENCE
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.report import figures
from ggt_search.report.page import Page
from ggt_search.report.statistics import ALPHA, holm, holm_levels, mean_interval, paired_comparison

# Published test ROC-AUC (x 100, mean +- std over 10 seeds) of a 5-layer GIN without pre-training on OGB's
# scaffold splits (Hu et al., ICLR 2020, table 1): a yardstick for the baselines of the CPU suite.
PUBLISHED_GIN = {
    "ogbg-molbbbp": (65.8, 4.5),
    "ogbg-moltox21": (74.0, 0.8),
    "ogbg-moltoxcast": (63.4, 0.6),
    "ogbg-molsider": (57.3, 1.6),
    "ogbg-molclintox": (58.0, 4.4),
    "ogbg-molmuv": (71.8, 2.5),
    "ogbg-molhiv": (75.3, 1.9),
    "ogbg-molbace": (70.1, 5.4),
}


@dataclass
class AblationRuns:
    """One dataset's runs of an ablation: the finished ones, and every run that is not."""

    study: optuna.Study
    dataset: str
    metric: str
    higher: bool
    info: dict  # the ablation as stored with the study (question, baseline, variants, seeds, effect)
    runs: pd.DataFrame  # one row per finished (variant, seed); a tuned ablation's at each variant's chosen lr
    problems: pd.DataFrame  # runs that failed, were pruned, are still running or waiting, or duplicate another
    tuning: pd.DataFrame  # a tuned ablation's finished runs at every lr (empty untuned)
    chosen: dict[str, float]  # a tuned ablation's chosen lr per variant ({} untuned)

    @property
    def order(self) -> list[str]:
        return [BASELINE, *[v for v in self.info["variants"] if v in set(self.runs.variant)]]


def ablation_runs(study: optuna.Study) -> AblationRuns:
    rows, problems, seen = [], [], set()
    for t in study.get_trials(deepcopy=False):
        key = run_key(t)
        variant, seed = key.variant, key.seed
        record = TrialRecord.of(t)
        if t.state != TrialState.COMPLETE or key in seen:
            duplicate = t.state == TrialState.COMPLETE
            reason = "a duplicate of a finished run (kept out)" if duplicate else record.reason or ""
            if variant is not None and not reason.startswith("surplus"):
                problems.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "trial": t.number,
                        "state": t.state.name.lower(),
                        "reason": reason,
                    }
                )
            continue
        seen.add(key)
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                # what pairs runs: the seed, or (split seed, seed) where the ablation varies the split
                "cell": seed if key.split_seed is None else f"split {key.split_seed} seed {seed}",
                "split_seed": key.split_seed,
                "lr": key.lr,
                "code": same_code(study, code) if (code := (record.environment or {}).get("code_sha256")) else None,
                "valid": t.value,
                "test": record.test,
                "parameters": record.parameters,
                "seconds_per_epoch": record.seconds_per_epoch,
                "best_epoch": record.best_epoch,
                "curve": record.curve,
            }
        )
    described = StudyRecord.of(study)
    runs, chosen = pd.DataFrame(rows), chosen_learning_rates(study)
    tuning = runs if chosen else pd.DataFrame()
    if chosen:
        runs = runs[runs.lr == runs.variant.map(chosen)].reset_index(drop=True)
    return AblationRuns(
        study,
        described.summary["name"],
        described.metric,
        described.direction == "maximize",
        described.ablation,
        runs,
        pd.DataFrame(problems),
        tuning,
        chosen,
    )


def compare(datasets: list[AblationRuns]) -> pd.DataFrame:
    """Every variant against the baseline on every dataset, over matching seeds; Holm over the whole family."""
    family = sum(len(d.order) - 1 for d in datasets)
    rows = []
    for d in datasets:
        by_seed = {v: d.runs[d.runs.variant == v].set_index("cell") for v in d.order}
        base = by_seed[BASELINE]
        for variant in d.order[1:]:
            seeds = sorted(set(by_seed[variant].index) & set(base.index))
            own = by_seed[variant].loc[seeds]
            test = paired_comparison(
                own["test"].to_numpy(), base.loc[seeds, "test"].to_numpy(), family, d.info.get("effect")
            )
            valid = paired_comparison(own["valid"].to_numpy(), base.loc[seeds, "valid"].to_numpy(), family)
            rows.append(
                {
                    "dataset": d.dataset,
                    "variant": variant,
                    **test,
                    "valid_diff": valid["mean_diff"],
                    "p_valid": valid.get("p_t"),
                    "higher": d.higher,
                    "effect": d.info.get("effect"),
                    "widest": WIDEST_DIFFERENCE.get(d.metric),
                }
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    testable = frame["testable"].to_numpy()
    frame["p_holm"] = np.nan
    frame["adj_low"] = frame["adj_high"] = np.nan
    if testable.any():
        p_values = frame.loc[testable, "p_t"].tolist()
        frame.loc[testable, "p_holm"] = holm(p_values)
        # Each difference's interval at the level Holm tested it: it excludes 0 exactly when the verdict is helps/hurts.
        for index, level in zip(frame.index[testable], holm_levels(p_values)):
            r = frame.loc[index]
            frame.loc[index, ["adj_low", "adj_high"]] = mean_interval(r["mean_diff"], r["sd"], r["n"], 1 - level)
    frame["verdict"] = [verdict(r, r["higher"], r["effect"]) for r in frame.to_dict("records")]
    return frame


def verdict(row: dict, higher_is_better: bool, effect: float | None) -> str:
    if not row["testable"]:
        return f"not testable ({row['why']})"
    interval = (
        f"{row['mean_diff']:+.4f}, 95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], "
        f"family-adjusted CI [{row['adj_low']:+.4f}, {row['adj_high']:+.4f}]"
    )
    if row["p_holm"] < ALPHA:
        better = (row["mean_diff"] > 0) == higher_is_better
        return f"{'helps' if better else 'hurts'} ({interval}, Holm p = {row['p_holm']:.3g}, {row['n']} seeds)"
    text = f"no detectable effect at {row['n']} seeds ({interval}); with this spread, {row['n']} seeds "
    widest = row.get("widest")
    if widest is not None and row["detectable"] > widest:  # e.g. ±3.6 ROC-AUC: no real effect could show
        text += (
            f"cannot detect even the largest difference the metric allows (±{widest:g}): "
            f"this comparison needs more seeds"
        )
    else:
        text += f"detect (80% power) only differences of ±{row['detectable']:.4f} or more"
    if effect is not None:
        needed = row.get("seeds_for_effect")
        text += f"; ±{effect:g} would need {'more than 1000' if needed is None else f'about {needed}'} seeds"
    return text


def ablation_sections(page: Page, studies: list[optuna.Study]) -> None:
    datasets = [ablation_runs(s) for s in studies]
    empty = [d.study.study_name for d in datasets if d.runs.empty]
    if empty:
        raise UserError(f"study {', '.join(empty)} has no finished runs yet; run `ggt-search ablate` first")
    info = datasets[0].info
    group = StudyRecord.of(studies[0]).group or studies[0].study_name
    page.heading(f"Ablation: {info['idea']} ({group})")
    if info.get("question"):
        page.text(info["question"])
    page.text(
        f"Datasets: {', '.join(d.dataset for d in datasets)}. Each variant changes one thing of the baseline; "
        f"seeds {info['seeds']}; every run has the same epoch budget, no pruning; validation picks each run's "
        f"epoch, and test is scored once, with that epoch's weights."
    )
    comparison = compare(datasets)
    verdict_section(page, comparison, len(datasets))
    variance_sources_section(page, info)
    code_section(page, datasets)
    tuned_learning_rates_section(page, datasets)
    for d in datasets:
        dataset_sections(page, d, comparison[comparison.dataset == d.dataset])
    if len(datasets) > 1 or len(info["seeds"]) > 1:
        rank_section(page, datasets)
    configuration_section(page, datasets)
    runs = pd.concat([d.runs.drop(columns="curve").assign(dataset=d.dataset) for d in datasets])
    varied = [c for c in ("split_seed", "lr") if runs[c].notna().any()]
    columns = ["dataset", "variant", *varied, "seed", "valid", "test", "best_epoch", "parameters", "seconds_per_epoch"]
    runs[[*columns, "code"]].to_csv(page.out / "runs.csv", index=False)
    page.text(
        f"Every finished run, one row per (dataset, variant, {', '.join([*varied, 'seed'])}), with the sha256 of "
        "the code that ran it: runs.csv beside this report."
    )


def variance_sources_section(page: Page, info: dict) -> None:
    """Which sources of variance the verdicts' intervals cover: the seeds only, or the seeds and the split."""
    page.heading("Variance sources", 3)
    split_seeds = info.get("split_seeds")
    if split_seeds:
        page.text(
            f"The verdicts cover two sources of variance: training randomness (seeds {info['seeds']}) and the data "
            f"split (balanced scaffold splits {split_seeds}, chemprop's recipe). Runs are paired by (split seed, "
            f"seed): each comparison's n counts those cells."
        )
    else:
        page.text(
            f"The verdicts cover one source of variance: training randomness (seeds {info['seeds']}), on the "
            "dataset's one fixed split (OGB's, for OGB names). Another split of the molecules could change them; "
            "an ablation file's `split_seeds:` varies the split too."
        )


def code_section(page: Page, datasets: list[AblationRuns]) -> None:
    """Whether each comparison's runs were made by the same code (`train.code_sha256`, recorded by each run)."""
    page.heading("Code of the compared runs", 3)
    flagged = False
    for d in datasets:
        for variant in d.order[1:]:
            runs = d.runs[d.runs.variant.isin([BASELINE, variant])]
            where = f"{variant} vs baseline{f' on {d.dataset}' if len(datasets) > 1 else ''}"
            if runs["code"].isna().any():
                page.text(f"{where}: code not recorded for {int(runs['code'].isna().sum())} of its runs.")
                flagged = True
            elif runs["code"].nunique() > 1:
                by_variant = runs.groupby("variant")["code"].unique()
                hashes = "; ".join(f"{v}: {', '.join(c[:12] for c in codes)}" for v, codes in by_variant.items())
                page.text(f"{where}: runs from different code ({hashes}); the difference may be the code's.")
                flagged = True
    codes = pd.concat([d.runs["code"] for d in datasets]).dropna().unique()
    if not flagged:
        page.text(f"Every compared run was made by the same code (sha256 {codes[0][:12]}...).")


def tuned_learning_rates_section(page: Page, datasets: list[AblationRuns]) -> None:
    """A tuned ablation's learning rate per variant: the one with the best mean validation score (never test)."""
    if not any(d.chosen for d in datasets):
        return
    page.heading("Tuned learning rates", 3)
    page.text(
        "Each variant (the baseline too) ran at every learning rate of `tune`; the one with the best mean "
        "validation score over its runs is chosen (ties: the first listed), and the comparisons above use the runs "
        "at each variant's chosen rate. Test scores took no part in the choice."
    )
    for d in datasets:
        table = (
            d.tuning.groupby(["variant", "lr"])
            .agg(runs=("valid", "count"), valid_mean=("valid", "mean"), valid_std=("valid", "std"))
            .reset_index()
        )
        table["chosen"] = table.lr == table.variant.map(d.chosen)
        table["variant"] = pd.Categorical(table.variant, d.order)
        if len(datasets) > 1:
            page.text(f"{d.dataset}:")
        table = table.sort_values(["variant", "lr"]).reset_index(drop=True)
        page.table(table, floatfmt=[".4f" if column != "lr" else "g" for column in table.columns])


def verdict_section(page: Page, comparison: pd.DataFrame, datasets: int) -> None:
    page.heading("Verdicts", 3)
    testable = int(comparison["testable"].sum()) if not comparison.empty else 0
    page.text(
        f"Paired t-tests on test over matching seeds, Holm-corrected over all {testable} testable comparisons"
        f"{f' on {datasets} datasets' if datasets > 1 else ''} (family-wise error {ALPHA}). The 95% CI is "
        f"each difference's own. The family-adjusted CI goes with the Holm decision: it is the t-interval at the "
        f"level Holm's step-down test used for that comparison (1 - {ALPHA}/(m - i + 1) for the i-th smallest p; "
        f"after the step where Holm stops, that step's level), so it excludes 0 exactly when Holm's test finds a "
        f"difference. Bonferroni's intervals (level 1 - {ALPHA}/m for all) are as wide as the smallest p's and, "
        f"unlike these, cover all differences at once with 95% probability. Detectable effects are stated at "
        f"Bonferroni's level. "
        f"'No detectable effect' is not 'no effect': it says how large an effect the seeds rule out."
    )
    for r in comparison.to_dict("records"):
        where = f" on {r['dataset']}" if datasets > 1 else ""
        page.text(f"{r['variant']} vs baseline{where}: {r['verdict']}")


def dataset_sections(page: Page, d: AblationRuns, comparison: pd.DataFrame) -> None:
    metric, order = d.metric, d.order
    page.heading(f"{d.dataset}: scores per variant ({metric}, {'higher' if d.higher else 'lower'} is better)", 3)
    summary = (
        d.runs.groupby("variant")
        .agg(
            seeds=("seed", "count"),
            valid_mean=("valid", "mean"),
            valid_std=("valid", "std"),
            test_mean=("test", "mean"),
            test_std=("test", "std"),
            best_epoch=("best_epoch", "mean"),
            parameters=("parameters", "first"),
            seconds_per_epoch=("seconds_per_epoch", "mean"),
        )
        .reindex(order)
        .reset_index()
    )
    page.table(summary)
    if d.dataset in PUBLISHED_GIN and not d.info.get("split_seeds"):  # their split is OGB's fixed one
        mean, std = PUBLISHED_GIN[d.dataset]
        base = d.runs.loc[d.runs.variant == BASELINE, "test"]
        page.text(
            f"For scale: Hu et al. (2020) report {mean} ± {std} test ROC-AUC (x 100) for a 5-layer GIN without "
            f"pre-training on the same scaffold split; this baseline scores {100 * base.mean():.1f} ± "
            f"{100 * base.std():.1f} over {len(base)} seeds."
        )
    slug = Path(d.dataset).stem
    page.figure(
        figures.scores_figure(d.runs, order, metric),
        f"scores-{slug}",
        f"{metric} per variant: dots are seeds; bars the mean with its 95% t-interval (within the metric's range)",
    )
    if comparison.empty:
        return
    page.heading(f"{d.dataset}: paired differences to the baseline (test, matching seeds)", 3)
    columns = [
        "variant",
        "n",
        "mean_diff",
        "ci_low",
        "ci_high",
        "adj_low",
        "adj_high",
        "p_t",
        "p_wilcoxon",
        "p_holm",
        "detectable",
    ]
    if comparison["effect"].notna().any():
        columns.append("seeds_for_effect")
    page.table(comparison.reindex(columns=columns))
    page.figure(
        figures.differences_figure(comparison, metric),
        f"differences-{slug}",
        "Paired test differences to the baseline: the 95% CI (thick) and the family-adjusted CI (thin), as in "
        "the table; the line is no effect",
    )
    page.heading(f"{d.dataset}: validation and test", 3)
    for r in comparison.to_dict("records"):
        if r["testable"] and np.sign(r["valid_diff"]) != np.sign(r["mean_diff"]):
            page.text(
                f"{r['variant']}: validation and test disagree in sign (valid {r['valid_diff']:+.4f}, test "
                f"{r['mean_diff']:+.4f}); the validation set is small or the effect is within noise."
            )
    page.table(
        comparison.reindex(columns=["variant", "valid_diff", "p_valid", "mean_diff", "p_t"]).rename(
            columns={"mean_diff": "test_diff", "p_t": "p_test"}
        )
    )
    page.figure(
        figures.curves_figure(d.runs, order, metric),
        f"curves-{slug}",
        f"Validation {metric} per epoch: mean over seeds with its 95% t-interval",
    )


def rank_section(page: Page, datasets: list[AblationRuns]) -> None:
    """GraphGym-style: within each (dataset, seed) cell, rank the variants by test score (1 = best)."""
    rows = []
    for d in datasets:
        for seed, cell in d.runs.groupby("cell"):
            ranks = cell.set_index("variant")["test"].rank(ascending=not d.higher, method="average")
            rows += [{"dataset": d.dataset, "seed": seed, "variant": v, "rank": r} for v, r in ranks.items()]
    ranks = pd.DataFrame(rows)
    order = datasets[0].order
    page.heading("Ranks across (dataset, seed) cells", 3)
    page.text(
        "Within each cell (one dataset, one seed) the variants are ranked by their test score, 1 = best, ties "
        "averaged. A variant that helps everywhere ranks low everywhere; the spread shows how much the ranking "
        "depends on the cell."
    )
    page.table(ranks.groupby("variant")["rank"].agg(["mean", "median", "count"]).reindex(order).reset_index())
    counts = ranks.assign(rank=ranks["rank"].round().astype(int)).pivot_table(
        index="variant", columns="rank", values="seed", aggfunc="count", fill_value=0
    )
    page.figure(figures.rank_counts_figure(counts.reindex(order)), "ranks", "How often each variant took each rank")


def configuration_section(page: Page, datasets: list[AblationRuns]) -> None:
    info = datasets[0].info
    page.heading("Run configuration", 3)
    baseline = info["baseline"]
    settings = {**baseline["model"], **baseline["train"]}
    page.text(
        "Baseline (model and training): "
        + ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("seed", "device"))
    )
    page.text("Variants: " + "; ".join(f"{name}: {change}" for name, change in info["variants"].items()))
    for d in datasets:
        sizes = d.runs.groupby("variant")["parameters"].first().reindex(d.order)
        base = sizes[BASELINE]
        differing = [f"{v} ({int(n):,})" for v, n in sizes.items() if v != BASELINE and n != base]
        if differing:
            page.text(
                f"{d.dataset}: the baseline has {int(base):,} parameters; variants of another size: "
                f"{', '.join(differing)}. A size change is part of what such a variant changes."
            )
        if not d.problems.empty:
            page.text(f"{d.dataset}: runs not in the statistics (failed, pruned, unfinished or duplicated):")
            page.table(d.problems)

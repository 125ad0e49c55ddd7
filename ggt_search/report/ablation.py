"""An ablation's sections of a report (one study per dataset, reported together; ablations that share
their baseline runs bit for bit, together as one family): first one verdict table, a row per idea
and a column per dataset and pooled over them, and its forest figure; then, per dataset and variant,
validation and test over seeds; the paired difference to the baseline over matching seeds with its
95% t-interval and its simultaneous interval (sign-flip max-t over the dataset's comparisons), the
equivalence test against the smallest effect of interest, convergence and compute, and what the seeds
could detect (power); learning curves; ranks within (dataset, seed) cells; every run left out, with
its reason. Ablations are final evaluations of fixed configs, so their sections show test scores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from ggt_search.ablate import BASELINE, chosen_learning_rates, run_key, same_code
from ggt_search.config import RunConfig, config_difference
from ggt_search.errors import UserError
from ggt_search.metrics import TRIVIAL, WIDEST_DIFFERENCE
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.report import figures
from ggt_search.report.page import Page
from ggt_search.report.resampling import COLUMN, bootstrap_note, with_bootstrap
from ggt_search.report.sizes import size_quarters
from ggt_search.report.statistics import (
    ALPHA,
    EXACT_FLIPS,
    FLIP_DRAWS,
    SUSPECT_MADS,
    dataset_level,
    default_margin,
    holm,
    max_t,
    paired_comparison,
    random_effects,
    simultaneous_detectable,
    standardised_effect,
    suspect,
    tost_p,
)
from ggt_search.storage import artifact_dir
from ggt_search.trials import StoredTestPredictions

SIMULTANEOUS = ("p_tost", "d_z", "d_z_var", "sim_low", "sim_high", "p_maxt", "p_equivalent", "critical")
LATE = 0.1  # a run "peaks late" when its best epoch is in this last share of its epoch budget
STILL_IMPROVING = 0.25  # the share of late peaks above which a comparison is flagged as not converged
MARKS = {"helps": "▲", "hurts": "▼", "equivalent": "=", "inconclusive": "?", "suspect": "!", "not testable": "–"}
BOOTSTRAP_MARK = "‡"  # a helps / hurts within the test molecules' sampling error (resampling.with_bootstrap)

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

    def paired(self) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
        """Per variant, its runs and the baseline's on the cells both finished, row by row the same cell."""
        by_cell = {v: self.runs[self.runs.variant == v].set_index("cell") for v in self.order}
        for variant in self.order[1:]:
            cells = sorted(set(by_cell[variant].index) & set(by_cell[BASELINE].index))
            yield variant, by_cell[variant].loc[cells], by_cell[BASELINE].loc[cells]


def ablation_group(studies: list[optuna.Study]) -> list[AblationRuns]:
    """An ablation's runs, one per dataset; refused while a dataset has none finished."""
    datasets = [ablation_runs(s) for s in studies]
    empty = [d.study.study_name for d in datasets if d.runs.empty]
    if empty:
        raise UserError(f"study {', '.join(empty)} has no finished runs yet; run `ggt-search ablate` first")
    return datasets


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
                "budget": ((record.config or {}).get("train") or {}).get("epochs"),
                "ran": record.epochs or len(record.curve),
                "trivial": (record.trivial or {}).get("test", np.nan),
                "config": record.config,
                "curve": record.curve,
                "predictions": record.predictions,  # the artifact id of its valid and test predictions, if stored
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


def control_difference(a: list[AblationRuns], b: list[AblationRuns]) -> str | None:
    """Why two ablations do not share one control, or None when they do: the same datasets (same
    checksums) and, on each, baseline runs of the same cells that are the same runs bit for bit (same
    config, same code, same validation and test scores)."""
    if [d.dataset for d in a] != [d.dataset for d in b]:
        return "they ran on other datasets"
    for x, y in zip(a, b):
        if StudyRecord.of(x.study).checksum != StudyRecord.of(y.study).checksum:
            return f"their {x.dataset} files differ (sha256)"
        if x.chosen or y.chosen:
            return "one tunes its learning rate per variant"
        if (x.info.get("effect"), x.info.get("split_seeds")) != (y.info.get("effect"), y.info.get("split_seeds")):
            return "they ask for another effect or other splits"
        here, there = (d.runs[d.runs.variant == BASELINE].set_index("cell").sort_index() for d in (x, y))
        if list(here.index) != list(there.index):
            return f"their {x.dataset} baselines ran other seeds"
        for cell in here.index:
            one, other = here.loc[cell], there.loc[cell]
            same_config = config_difference(RunConfig.from_dict(one.config), RunConfig.from_dict(other.config)) is None
            code_matches = one.code == other.code or (pd.isna(one.code) and pd.isna(other.code))  # both unrecorded
            if not (same_config and code_matches and (one.valid, one.test) == (other.valid, other.test)):
                return f"their {x.dataset} baseline runs of seed {cell} differ"
    return None


def ablation_families(named: dict[str, list[AblationRuns]], unnamed: dict[str, list[AblationRuns]]) -> list:
    """The named ablations as families, each [(its groups' runs), the sentence that states its family and control]:
    ablations whose baselines are the same runs are one family (they share one control, so they are one
    many-to-one comparison). An unnamed ablation of the same storage sharing the control is named in the sentence."""
    families: list[list[str]] = []
    for name in named:
        home = next((f for f in families if control_difference(named[f[0]], named[name]) is None), None)
        if home is None:
            families.append([name])
        else:
            home.append(name)
    out = []
    for members in families:
        runs = named[members[0]]
        comparisons = sum(len(d.order) - 1 for group in members for d in named[group])
        sharing = [n for n, other in unnamed.items() if control_difference(runs, other) is None]
        control = (
            f"the baseline runs of {', '.join(members)} on each dataset (seeds {runs[0].info['seeds']}), shared "
            f"bit for bit (same config, code, dataset checksum and scores per seed), so they are analysed together"
            if len(members) > 1
            else "the baseline runs of this ablation on each dataset"
        )
        note = f"Family: the {comparisons} comparisons of {' and '.join(members)}; control: {control}."
        if sharing:
            note += (
                f" Not in this family: {', '.join(sharing)}, in this report's storages, shares this control; "
                f"`ggt-search report {' '.join([*members, *sharing])}` analyses them as one family."
            )
        elif len(families) > 1:
            note += " The other ablations of this report have controls of their own and are families of their own."
        else:
            note += (
                " No other ablation in the storages of this report shares it; one elsewhere would not be in this "
                "family (`ggt-search report A B --storage X --storage Y` reports them together, one family if they "
                "share it)."
            )
        out.append(([named[n] for n in members], note))
    return out


def merge_groups(groups: list[list[AblationRuns]]) -> list[AblationRuns]:
    """The datasets of ablations that share a control, as one ablation: the first one's baseline runs and
    every variant of each (named group/variant where two groups use the same name)."""
    first, rest = groups[0], groups[1:]
    if not rest:
        return first
    merged = []
    for i, d in enumerate(first):
        runs, problems, variants, taken = [d.runs], [d.problems], dict(d.info["variants"]), set(d.info["variants"])
        for group in rest:
            other = group[i]
            name = StudyRecord.of(other.study).group or other.study.study_name
            rename = {v: (f"{name}/{v}" if v in taken else v) for v in other.info["variants"]}
            taken |= set(rename.values())
            variants |= {rename[v]: change for v, change in other.info["variants"].items()}
            runs.append(other.runs[other.runs.variant != BASELINE].replace({"variant": rename}))
            problems.append(other.problems.replace({"variant": rename}) if not other.problems.empty else other.problems)
        ideas = " + ".join(dict.fromkeys(g[i].info["idea"] for g in groups))
        questions = " ".join(g[i].info.get("question") or "" for g in groups).strip()
        info = d.info | {"idea": ideas, "question": questions, "variants": variants}
        merged.append(
            AblationRuns(
                d.study,
                d.dataset,
                d.metric,
                d.higher,
                info,
                pd.concat(runs, ignore_index=True),
                pd.concat(problems, ignore_index=True),
                d.tuning,
                d.chosen,
            )
        )
    return merged


def compare(datasets: list[AblationRuns]) -> pd.DataFrame:
    """Every variant against the baseline on every dataset, over matching seeds. Within a dataset the
    comparisons share the baseline: one sign-flip max-t gives their simultaneous intervals and
    decisions, at the per-dataset level that holds the family-wise error ALPHA over all datasets."""
    family = sum(len(d.order) - 1 for d in datasets)
    level = dataset_level(ALPHA, planned_datasets(datasets))
    frames = []
    for d in datasets:
        if len(d.order) == 1:  # no variant has finished a run yet
            continue
        means = d.runs.groupby("variant")[["test", "trivial"]].mean().reindex(d.order)  # the baseline first
        margin = d.info.get("effect") or default_margin(d.metric, float(means.loc[BASELINE, "test"]))
        flagged = suspect(means["test"].to_dict(), means["trivial"].to_dict(), d.higher)
        rows, differences = [], {}
        for variant, own, base in d.paired():
            diff = own["test"] - base["test"]
            test = paired_comparison(own["test"].to_numpy(), base["test"].to_numpy(), family, d.info.get("effect"))
            valid = paired_comparison(own["valid"].to_numpy(), base["valid"].to_numpy(), family)
            both = pd.concat([own, base])
            row = {
                "dataset": d.dataset,
                "variant": variant,
                **test,
                "valid_diff": valid["mean_diff"],
                "p_valid": valid.get("p_t"),
                "higher": d.higher,
                "margin": margin,
                "effect": d.info.get("effect"),
                "widest": WIDEST_DIFFERENCE.get(d.metric),
                "suspect": flagged.get(variant),
                "late_share": float(((both.ran >= both.budget) & (both.best_epoch > (1 - LATE) * both.budget)).mean()),
                "budget": int(both.budget.max()),
                "seconds_per_epoch": float(own.seconds_per_epoch.mean()),
                "seconds_ratio": float(own.seconds_per_epoch.mean() / base.seconds_per_epoch.mean()),
            }
            if test["testable"]:
                row["p_tost"] = tost_p(diff.to_numpy(), margin)
                row["d_z"], row["d_z_var"] = standardised_effect(diff.to_numpy(), 1 if d.higher else -1)
                differences[variant] = diff
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame = frame.reindex(columns=[*frame.columns, *(c for c in SIMULTANEOUS if c not in frame)])  # none testable
        frame["level"] = level
        if differences:  # cells x comparisons, NaN where a variant lacks a baseline's seed
            simultaneous = max_t(pd.DataFrame(differences).to_numpy(), level)
            at = frame.variant.isin(list(differences))
            equivalence = np.minimum(frame.loc[at, "mean_diff"] + margin, margin - frame.loc[at, "mean_diff"])
            frame.loc[at, "sim_low"], frame.loc[at, "sim_high"] = simultaneous.low, simultaneous.high
            frame.loc[at, "p_maxt"] = simultaneous.adjusted_p(np.abs(simultaneous.mean / simultaneous.se))
            frame.loc[at, "p_equivalent"] = simultaneous.adjusted_p(equivalence.to_numpy() / simultaneous.se)
            frame.loc[at, "critical"] = simultaneous.critical
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["verdict"] = [verdict(r) for r in frame.to_dict("records")]
    return frame


def planned_datasets(datasets: list[AblationRuns]) -> int:
    """How many datasets the family's error is shared over: the ablation file's (recorded by studies since
    they record them), not only those started, so a verdict made while a study runs holds when it ends."""
    return max(len(datasets), len(datasets[0].info.get("datasets") or []))


def verdict(row: dict) -> str:
    """helps / hurts when the simultaneous interval excludes 0; equivalent when it lies within the margin;
    else inconclusive. A suspect variant gets no verdict on the idea: its implementation comes first."""
    if not row["testable"]:
        return "not testable"
    if isinstance(row.get("suspect"), str):
        return "suspect"
    if row["p_maxt"] <= row["level"]:
        return "helps" if (row["mean_diff"] > 0) == row["higher"] else "hurts"
    return "equivalent" if row["p_equivalent"] <= row["level"] else "inconclusive"


def pool(comparison: pd.DataFrame, ideas: list[str]) -> pd.DataFrame:
    """One verdict per idea across datasets: DerSimonian-Laird over the datasets' standardised paired
    effects (d_z, + is better), Holm over the ideas."""
    rows = []
    for variant in ideas:
        own = comparison[(comparison.variant == variant) & comparison.testable]
        if own.empty:
            rows.append({"variant": variant, "datasets": 0})
            continue
        rows.append(
            {"variant": variant, **random_effects(own.d_z.to_numpy(), own.d_z_var.to_numpy())}
            | {"suspect": own.suspect.map(lambda s: isinstance(s, str)).any()}
        )
    pooled = pd.DataFrame(rows)
    testable = pooled.datasets > 0
    pooled["p_holm"] = np.nan
    if testable.any():
        pooled.loc[testable, "p_holm"] = holm(pooled.loc[testable, "p"].tolist())
    pooled["verdict"] = [
        "not testable"
        if not r["datasets"]
        else "suspect"
        if r["suspect"]
        else ("helps" if r["effect"] > 0 else "hurts")
        if r["p_holm"] < ALPHA
        else "inconclusive"
        for r in pooled.to_dict("records")
    ]
    return pooled


def ablation_sections(page: Page, groups: list[list[AblationRuns]], family_note: str, storage: str) -> None:
    """One family's sections: the ablations in `groups` share one control (one ablation, usually). The
    bootstrap reads stored predictions beside `storage` (the first group's)."""
    datasets = merge_groups(groups)
    info = datasets[0].info
    names = [StudyRecord.of(group[0].study).group or group[0].study.study_name for group in groups]
    page.heading(f"Ablation: {info['idea']} ({', '.join(names)})")
    predictions = StoredTestPredictions(artifact_dir(storage))  # where `ablate` stores them: no other folder
    comparison = with_bootstrap(compare(datasets), datasets, predictions)
    pooled = pool(comparison, ideas(datasets)) if len(datasets) > 1 else None
    verdict_table_section(page, datasets, comparison, pooled)
    if info.get("question"):
        page.text(info["question"])
    page.text(
        f"Datasets: {', '.join(d.dataset for d in datasets)}. Each variant changes one thing of the baseline; "
        f"seeds {info['seeds']}; every run has the same epoch budget, no pruning; validation picks each run's "
        f"epoch, and test is scored once, with that epoch's weights. {family_note}"
    )
    how_to_read_section(page, datasets, comparison, pooled)
    variance_sources_section(page, info)
    power_section(page, comparison)
    code_section(page, datasets)
    tuned_learning_rates_section(page, datasets)
    for d in datasets:
        dataset_sections(page, d, comparison[comparison.dataset == d.dataset], predictions)
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


def power_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, what its seeds can decide, from the spread of its paired differences: the difference
    the simultaneous test detects with 80% power, and how many comparisons could come out 'equivalent'
    at all (those whose simultaneous interval is narrower than the margin)."""
    rows = []
    for dataset, own in comparison[comparison.testable.astype(bool)].groupby("dataset", sort=False):
        n, critical, margin = int(own.n.median()), float(own.critical.iloc[0]), float(own.margin.iloc[0])
        sd = float(own.sd.median())
        half_width = (own.sim_high - own.sim_low) / 2  # c * sd / sqrt(n): the verdicts' own intervals
        rows.append(
            {
                "dataset": dataset,
                "paired seeds": n,
                "max-t c": critical,
                "paired sd (median)": sd,
                "paired sd (range)": f"{own.sd.min():.4f}-{own.sd.max():.4f}",
                "detectable (80% power)": simultaneous_detectable(sd, n, critical),
                "margin": margin,
                "interval half-width (median)": float(half_width.median()),
                "can reach 'equivalent'": f"{int((half_width < margin).sum())} of {len(own)}",
            }
        )
    return pd.DataFrame(rows)


def power_section(page: Page, comparison: pd.DataFrame) -> None:
    table = power_table(comparison)
    if table.empty:
        return
    page.heading("Power per dataset", 3)
    page.text(
        "What the seeds can decide, from the spread of each dataset's paired differences (the design, not the "
        "effects found): a true difference of the 'detectable' size is declared helps or hurts with about 80% "
        "probability by the simultaneous test (critical value c, the sd the median over comparisons); smaller "
        "ones mostly come out inconclusive. 'Equivalent' needs the whole simultaneous interval within ±margin, "
        "so a comparison whose half-width c·sd/√n exceeds the margin cannot reach it, whatever its effect; "
        "there, 'inconclusive' is a limit of the seeds, not a hint of an effect."
    )
    page.table(table)


def code_section(page: Page, datasets: list[AblationRuns]) -> None:
    """Whether each comparison's runs were made by the same code (`train.code_sha256`, recorded by each run)."""
    page.heading("Code of the compared runs", 3)
    flagged = False
    for d in datasets:
        if d.runs["code"].isna().all():  # runs from before runs recorded it: one line, not one per comparison
            page.text(f"{d.dataset}: code not recorded for any of its {len(d.runs)} runs.")
            flagged = True
            continue
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


def verdict_table_section(
    page: Page, datasets: list[AblationRuns], comparison: pd.DataFrame, pooled: pd.DataFrame | None
) -> None:
    """The first screen: a row per idea, a column per dataset (and pooled), each cell the effect, its
    simultaneous interval and its verdict's mark; then the same as a forest figure."""
    page.heading("Verdicts", 3)
    if note := unfinished_note(datasets):
        page.text(note)
    legend = ", ".join(
        f"{mark} {word}{' (within ±margin)' if word == 'equivalent' else ''}" for word, mark in MARKS.items()
    )
    page.text(
        f"Variant minus baseline (test, same seeds) [simultaneous {1 - ALPHA:.0%} interval]: {legend}; "
        f"† still improving at the end; {BOOTSTRAP_MARK} within the test molecules' sampling error. "
        "Pooled: standardised effect d (+ better) [95%], I². "
        "Below: how to read it."
    )
    table = pd.DataFrame({"idea": ideas(datasets)})
    for d in datasets:
        own = comparison[comparison.dataset == d.dataset].set_index("variant")
        unit = f"{d.dataset} {d.metric} {'↑' if d.higher else '↓'}"
        table[unit] = [verdict_cell(own.loc[v]) if v in own.index else "" for v in table.idea]
    if pooled is not None:
        table["pooled d"] = [pooled_cell(r) for r in pooled.to_dict("records")]
    page.table(table)
    page.figure(
        figures.forest_figure(comparison, pooled, [d.dataset for d in datasets], ideas(datasets), MARKS),
        "verdicts",
        "Each idea's effect per dataset with its simultaneous interval (pooled: d with its 95% interval), "
        "coloured by verdict; the grey band is ±margin",
    )


def unfinished_note(datasets: list[AblationRuns]) -> str | None:
    """What the verdicts do not cover yet, or None: each dataset's runs still to finish, and the datasets of
    the ablation file not started (recorded by studies since they record the file's datasets)."""
    info = datasets[0].info
    grid = len(info.get("split_seeds") or [None]) * len((info.get("tune") or {}).get("lr") or [None])
    planned = (len(info["variants"]) + 1) * len(info["seeds"]) * grid
    parts = []
    for d in datasets:
        finished = len(d.tuning if d.chosen else d.runs)
        if finished < planned:
            parts.append(f"{d.dataset} has {finished} of its {planned} runs")
    started = {d.dataset for d in datasets}
    parts += [f"{name} has not started" for name in info.get("datasets", []) if name not in started]
    if not parts:
        return None
    return (
        f"Unfinished: {'; '.join(parts)}. These verdicts are of the runs finished so far, and will change as "
        "the rest finish (`ggt-search ablate` resumes the study)."
    )


def ideas(datasets: list[AblationRuns]) -> list[str]:
    """The variants with a finished run on any dataset, in the ablation file's order."""
    return [v for v in datasets[0].info["variants"] if any(v in d.order for d in datasets)]


def verdict_cell(row: pd.Series) -> str:
    if not row["testable"]:
        return f"{MARKS['not testable']} {row['n']} seed{'s' if row['n'] != 1 else ''}"
    late = " †" if row["late_share"] > STILL_IMPROVING else ""
    mark = MARKS[row["verdict"]]
    if np.isinf(row["critical"]):  # too few sign patterns for any p to reach the level
        return f"{row['mean_diff']:+.3f} [unbounded at {row['n']} seeds] {mark}{late}"
    molecules = f" {BOOTSTRAP_MARK}" if within_molecule_error(row) else ""
    return f"{row['mean_diff']:+.3f} [{row['sim_low']:+.3f}, {row['sim_high']:+.3f}] {mark}{late}{molecules}"


def within_molecule_error(row) -> bool:
    """A helps / hurts whose simultaneous bootstrap over seeds and test molecules contains 0."""
    low, high = row.get("boot_sim_low", np.nan), row.get("boot_sim_high", np.nan)
    return row["verdict"] in ("helps", "hurts") and bool(low <= 0 <= high)


def pooled_cell(row: dict) -> str:
    if not row["datasets"]:
        return MARKS["not testable"]
    return f"{row['effect']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}] I² {row['i2']:.0%} {MARKS[row['verdict']]}"


def how_to_read_section(
    page: Page, datasets: list[AblationRuns], comparison: pd.DataFrame, pooled: pd.DataFrame | None
) -> None:
    """Each method once: the simultaneous intervals, equivalence, pooling, suspects, convergence, Wilcoxon."""
    page.heading("How to read the verdicts", 3)
    level = comparison["level"].iloc[0]
    cells = max(len(set(d.runs.cell)) for d in datasets)
    exact = cells <= EXACT_FLIPS
    patterns = 2**cells if exact else FLIP_DRAWS
    flips = f"all 2^{cells} sign patterns" if exact else f"{FLIP_DRAWS:,} random sign patterns (fixed seed)"
    fewest = next((n for n in range(1, EXACT_FLIPS + 1) if 1 / (2**n + 1) <= level), EXACT_FLIPS + 1)  # a verdict needs
    page.text(
        f"Simultaneous intervals: Westfall and Young's sign-flip max-t (single step). On each dataset every "
        f"variant is compared with the same baseline runs (Dunnett's many-to-one setting), so the comparisons are "
        f"dependent; flipping the sign of one seed's centred differences for all variants at once ({flips}) keeps "
        f"that dependence, and the {1 - level:.4f} quantile c of the largest |t| over the dataset's variants gives "
        f"the intervals mean ± c·se, which cover all of that dataset's true differences at once with probability "
        f"{1 - level:.4f}. The datasets' runs are independent, so at that level per dataset "
        f"(1 - (1 - {ALPHA})^(1/{planned_datasets(datasets)}), over the ablation file's datasets) all the family's "
        f"intervals hold together with probability {1 - ALPHA:.2f}. helps / hurts: the interval excludes 0 (the "
        f"max-t adjusted p, p_maxt, is at most {level:.4f}); the decisions and the intervals cannot disagree. "
        f"p_maxt is (b + 1) / (N + 1) for b of the N sign patterns reaching the comparison's |t| (Phipson and "
        f"Smyth 2010), so never below 1 / (N + 1) = {1 / (patterns + 1):.2g} here: a p_maxt "
        f"at that floor means no pattern reached it, not that p is exactly that; and an interval is unbounded, "
        f"with no verdict possible but inconclusive, where even that floor is above the level (below {fewest} "
        f"seeds at this level). {BOOTSTRAP_MARK} marks a helps "
        f"or hurts whose bootstrap over seeds and test molecules, at the same simultaneous level, does not "
        f"exclude 0: the difference is within the test molecules' sampling error."
    )
    margins = "; ".join(
        f"{d.dataset} ±{comparison.loc[comparison.dataset == d.dataset, 'margin'].iloc[0]:.4g}"
        + ("" if d.info.get("effect") else " (default)")
        for d in datasets
    )
    page.text(
        f"Equivalent within ±margin: two one-sided tests (TOST, Schuirmann 1987) against the smallest effect of "
        f"interest, the ablation file's `effect`, or by default 0.02 for ROC-AUC and AP and 5% of the baseline's "
        f"mean for RMSE and MAE. Margins: {margins}. Both one-sided statistics must pass the same max-t critical "
        f"value, so 'equivalent' means the simultaneous interval lies within ±margin (p_equivalent at most the "
        f"level); p_tost in the tables is each comparison's own TOST p-value. Inconclusive: neither: the seeds "
        f"neither show an effect nor rule one out. The detectable effect (80% power, at Bonferroni's level) and "
        f"the seeds an `effect` would need describe the design, not the data."
    )
    if pooled is not None:
        page.text(
            "Pooled: one verdict per idea across the datasets, by DerSimonian and Laird's random-effects "
            "meta-analysis of each dataset's standardised paired effect d_z = mean / sd of the differences (signed "
            "so + is better, variance 1/n + d²/(2n)), with the between-dataset variance tau² (clipped at 0) and I², "
            "the share of the spread that is heterogeneity; Holm over the ideas. DerSimonian-Laird rather than a "
            "mixed model: with three or four datasets a variance component of datasets is barely estimable, and "
            "the moment estimator is the standard, transparent choice whose every step the table shows."
        )
        page.table(
            pooled.reindex(
                columns=["variant", "datasets", "effect", "se", "low", "high", "tau2", "i2", "p", "p_holm", "verdict"]
            )
        )
    page.text(
        f"Suspect: a variant whose mean test score is no better than {TRIVIAL}, or more than {SUSPECT_MADS} robust "
        f"sds (MAD, scaled to the normal sd) worse than the median of the other variants and as far from the "
        f"nearest of them, is 'suspect: check the implementation' and gets no 'hurts' verdict: such a gap has "
        f"pointed at a defect before (cycle-count embeddings that swamped the atom features), not at the idea."
    )
    page.text(
        f"Late: more than {STILL_IMPROVING:.0%} of the comparison's runs (variant and baseline) had their best "
        f"validation epoch in the last {LATE:.0%} of the epoch budget: still improving at the end, so the verdict "
        f"holds at that budget only. A run stopped early (train.patience) counts as converged. Seconds per epoch "
        f"are shown per comparison: equal epochs are not equal compute."
    )
    family = int(comparison.testable.sum())
    smallest, first = 2 / 2**cells, ALPHA / max(family, 1)
    reach = "could not reject anything" if smallest > first else "could reject only the most extreme pattern"
    page.text(
        f"Wilcoxon's signed-rank test is not used: at {cells} seeds its smallest exact two-sided p is 2/2^{cells} = "
        f"{smallest:.2g}, {'above' if smallest > first else 'near'} the first threshold of a Bonferroni-Holm family "
        f"of {family} ({ALPHA}/{family} = {first:.2g}), so it {reach}; the sign-flip max-t above is the "
        "distribution-free check that can."
    )
    for r in comparison[comparison.suspect.map(lambda s: isinstance(s, str))].to_dict("records"):
        page.text(f"{r['variant']} on {r['dataset']}: suspect, check the implementation: {r['suspect']}.")
    for dataset, late in comparison[comparison.late_share > STILL_IMPROVING].groupby("dataset", sort=False):
        shares = ", ".join(f"{v} {share:.0%}" for v, share in zip(late.variant, late.late_share))
        page.text(
            f"{dataset}: still improving at the end, holds at {late.budget.max()} epochs: {len(late)} of "
            f"{int((comparison.dataset == dataset).sum())} comparisons ({shares} of their runs peak late)."
        )


def dataset_sections(page: Page, d: AblationRuns, comparison: pd.DataFrame, predictions: StoredTestPredictions) -> None:
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
    cells = "(split seed, seed) cells" if d.info.get("split_seeds") else "seeds"
    page.heading(
        f"{d.dataset}: paired differences to the baseline (test, up to {comparison.n.max()} paired {cells})", 3
    )
    columns = [
        "variant",
        "n",
        "mean_diff",
        "ci_low",
        "ci_high",
        "sim_low",
        "sim_high",
        "p_t",
        "p_maxt",
        "p_tost",
        "p_equivalent",
        COLUMN,
        "verdict",
        "detectable",
    ]
    if comparison["effect"].notna().any():
        columns.append("seeds_for_effect")
    page.table(comparison.reindex(columns=columns))
    for note in filter(None, map(design_note, comparison.to_dict("records"))):
        page.text(note)
    page.text(bootstrap_note(comparison))
    page.text(f"Convergence and compute ({d.dataset}, epoch budget {int(d.runs.budget.max())}):")
    page.table(
        comparison.reindex(columns=["variant", "late_share", "seconds_per_epoch", "seconds_ratio"]).rename(
            columns={"late_share": "share peaking late", "seconds_ratio": "x baseline's s/epoch"}
        ),
        floatfmt=".2f",
    )
    page.figure(
        figures.differences_figure(comparison, metric),
        f"differences-{slug}",
        "Paired test differences to the baseline: the 95% CI (thick) and the simultaneous interval (thin), as in "
        "the table; the line is no effect",
    )
    size_section(page, d, predictions)
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


def size_section(page: Page, d: AblationRuns, predictions: StoredTestPredictions) -> None:
    """The paired test differences within quarters of the test molecules by size (`sizes`)."""
    page.heading(f"{d.dataset}: test differences by molecule size", 3)
    table = size_quarters(d, predictions)
    if isinstance(table, str):
        page.text(f"Not shown: {table}.")
        return
    page.text(
        f"The test molecules in quarters by their number of atoms (molecules per quarter in brackets): the "
        f"baseline's mean {d.metric} in each, then each variant's mean paired difference to it there (variant "
        "minus baseline, same seeds; blank where a quarter's score is undefined). A difference concentrated at "
        "the small and large ends points at molecule size: mean pooling averages it away, and the Laplacian PEs "
        "are one of the baseline's signals of it. Descriptive: the quarters are small, and the verdicts are "
        "the paired tests above."
    )
    page.table(table)


def design_note(row: dict) -> str | None:
    """What a comparison's design cannot do, where it matters: no test at all, or no detectable effect
    within the metric's range (e.g. ±3.6 ROC-AUC at two seeds: no real effect could show)."""
    if not row["testable"]:
        return f"{row['variant']} vs baseline: not testable ({row['why']})"
    if row["widest"] is not None and row["detectable"] > row["widest"]:
        return (
            f"{row['variant']} vs baseline: with this spread, {row['n']} seeds cannot detect even the largest "
            f"difference the metric allows (±{row['widest']:g}): this comparison needs more seeds."
        )
    return None


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

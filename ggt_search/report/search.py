"""A search study's sections of a report: the optimisation history, the expected best score against
the number of trials, parameter importances with their spread, the best configurations with their
per-seed spread, the winner's curse of a confirmed search, and a GraphGym-style rank analysis. A
search chooses configs by validation score, so its sections show validation scores alone, never test."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from ggt_search.errors import UserError
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.report import figures
from ggt_search.report.page import Page
from ggt_search.report.statistics import expected_maximum, expected_maximum_band


def search_sections(page: Page, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise UserError(f"study {study.study_name} has no completed trial yet")
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    record, name = StudyRecord.of(study), study.study_name
    page.heading(f"Search: {name}")
    states = pd.Series([t.state.name.lower() for t in study.trials]).value_counts().to_dict()
    page.text(
        f"{len(study.trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); objective: validation "
        f"{record.metric or 'metric'}, {'maximised' if higher else 'minimised'}. "
        f"Test labels are not read during search."
    )
    environments = [TrialRecord.of(t).environment or {} for t in trials]
    hardware = sorted({f"{e.get('hardware', '?')} ({e.get('device', '?')})" for e in environments})
    page.text(
        f"Dataset {dataset_line(record)}; {record.epochs or 'an unrecorded number of'} epochs per trial at most"
        f"{seeds_line(record)}; sampler {record.sampler or 'not recorded'}, pruner {record.pruner or 'not recorded'}; "
        f"hardware: {', '.join(hardware)}. Command: {record.command or 'not recorded'}"
    )

    history = pd.DataFrame({"trial": [t.number for t in trials], "value": [t.value for t in trials]})
    history["best so far"] = history["value"].cummax() if higher else history["value"].cummin()
    page.heading("Optimisation history", 3)
    page.figure(
        figures.history_figure(history),
        f"history-{name}",
        "Validation metric of each completed trial, and the best so far",
    )
    page.text("The budget curve: the best validation score after each doubling of the completed trials.")
    page.table(budget_curve(history), floatfmt=["g", ".4f"])  # trial counts as integers

    expected_best_section(page, trials, higher, name)

    page.heading("Parameter importances (fANOVA)", 3)
    if len(trials) >= 4:
        if len(trials) < 20:
            page.text(
                f"Warning: only {len(trials)} completed trials. Importances from fewer than about 20 are "
                f"unstable: read them as a hint, not a ranking."
            )
        frame = pd.DataFrame(
            [
                optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
                )
                for seed in range(5)
            ]
        )
        summary = pd.DataFrame(
            {"parameter": frame.columns, "importance": frame.mean(), "std over 5 forests": frame.std()}
        )
        summary = summary.sort_values("importance", ascending=False)
        page.table(summary)
        page.figure(
            figures.importances_figure(summary),
            f"importances-{name}",
            "Share of the validation metric's variance explained by each parameter: the mean over 5 random "
            "forests, with their standard deviation",
        )
    else:
        page.text("Fewer than 4 completed trials: importances are not estimated.")

    page.heading("Best configurations", 3)
    best = sorted(trials, key=lambda t: t.value, reverse=higher)[:5]
    page.text("A parameter shown as - was not sampled for that trial (its `when:` condition did not hold).")
    names = parameter_names(best)
    configurations = pd.DataFrame(
        [
            {"trial": t.number, "valid": t.value, "parameters": TrialRecord.of(t).parameters}
            | {key: shown(t.params[key]) if key in t.params else "-" for key in names}
            for t in best
        ]
    )
    page.table(configurations, [".0f", ".4f", ".0f"] + ["g"] * len(names))  # a sampled value as `shown` wrote it
    seed_spread_section(page, best)
    winners_curse_section(page, record.confirmation)

    page.heading("Design-space ranks (GraphGym-style)", 3)
    ranks = design_ranks(trials, higher)
    controlled = any("design_group" in t.user_attrs for t in trials)
    if ranks.empty:
        page.text(
            "No two completed trials differ in one design dimension only, so no choice can be ranked with the "
            "others fixed. A controlled design makes such groups: `ggt-search search --sampler controlled`."
        )
        return
    groups = ranks.groupby(["dimension", "group"]).ngroups
    page.text(
        (
            "Groups from a controlled design (`--sampler controlled`): each group varies one dimension and repeats "
            "every other parameter, trained with a seed of its own. "
            if controlled
            else "Groups of trials that match in every other categorical parameter (this sampler does not make them on "
            "purpose; `--sampler controlled` does). "
        )
        + f"Within each of the {groups} groups, the dimension's choices are ranked by validation metric (1 = "
        "best, ties averaged). A lower mean rank over many groups = a better choice, other things equal; with "
        "few groups per dimension, read the ranks as a hint."
    )
    page.table(
        ranks.groupby(["dimension", "choice"])["rank"]
        .agg(["mean", "count"])
        .rename(columns={"count": "groups"})
        .reset_index()
    )
    page.figure(
        figures.design_ranks_figure(ranks),
        f"design-ranks-{name}",
        "Each choice's rank within each group that varied its dimension (1 = best)",
    )


def budget_curve(history: pd.DataFrame) -> pd.DataFrame:
    """The best so far after 1, 2, 4, ... completed trials, and after all of them: what more trials bought."""
    counts = sorted({*(2**k for k in range(len(history).bit_length()) if 2**k <= len(history)), len(history)})
    return pd.DataFrame(
        {"completed trials": counts, "best valid": [history["best so far"].iloc[n - 1] for n in counts]}
    )


def design_ranks(trials, higher: bool) -> pd.DataFrame:
    """GraphGym's rank analysis (You et al. 2020): within each group of trials that differ in
    one design dimension only, rank that dimension's choices by the validation metric.
    Groups are a controlled design's (user attrs design_group / design_dimension) when the
    study has them; otherwise trials that match in every other categorical parameter."""
    controlled = [t for t in trials if "design_group" in t.user_attrs]
    if controlled:
        frame = pd.DataFrame(
            [
                {
                    "group": t.user_attrs["design_group"],
                    "dimension": t.user_attrs["design_dimension"],
                    "choice": str(t.params.get(t.user_attrs["design_dimension"])),
                    "value": t.value,
                }
                for t in controlled
            ]
        )
        frame = frame.drop_duplicates(["group", "choice"])  # a retried trial repeats its group's choice
        grouped = [
            (dimension, group, part.set_index("choice")["value"])
            for (dimension, group), part in frame.groupby(["dimension", "group"])
        ]
    else:
        categorical = [
            {
                k: str(v)
                for k, v in t.params.items()
                if isinstance(t.distributions[k], optuna.distributions.CategoricalDistribution)
            }
            | {"value": t.value}
            for t in trials
        ]
        frame = pd.DataFrame(categorical).fillna("-")
        dimensions = [c for c in frame.columns if c != "value" and frame[c].nunique() > 1]
        grouped = []
        for dimension in dimensions:
            others = [d for d in dimensions if d != dimension]
            for number, (_, part) in enumerate(frame.groupby(others) if others else [(None, frame)]):
                best = part.groupby(dimension)["value"].max() if higher else part.groupby(dimension)["value"].min()
                grouped.append((dimension, number, best))
    rows = [
        {"dimension": dimension, "group": group, "choice": choice, "rank": rank}
        for dimension, group, values in grouped
        if len(values) >= 2
        for choice, rank in values.rank(ascending=not higher, method="average").items()
    ]
    return pd.DataFrame(rows, columns=["dimension", "group", "choice", "rank"])


def shown(value) -> str:
    """A sampled value as the space file writes it: true/false, an integer, a float to 4 significant digits."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def parameter_names(trials) -> list[str]:
    """Every parameter any of the trials sampled, in the order they were first sampled."""
    return list(dict.fromkeys(key for t in trials for key in t.params))


def dataset_line(record: StudyRecord) -> str:
    """The dataset's name, split sizes and source checksum, as far as the study recorded them."""
    dataset = record.summary or record.dataset
    if dataset is None:
        return "not recorded"
    split = dataset.get("split")
    sizes = ", ".join(f"{k} {v}" for k, v in split.items()) if isinstance(split, dict) else split
    checksum = f"sha256 {record.checksum[:12]}" if record.checksum else "no source checksum recorded"
    return f"{dataset['name']} ({sizes}; {checksum})" if sizes else f"{dataset['name']} ({checksum})"


def seeds_line(record: StudyRecord) -> str:
    per_trial = record.seeds_per_trial or 1
    return "" if per_trial == 1 else f", {per_trial} seeds per trial (a trial's value: their mean)"


EXPECTED_AT = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def expected_best_section(page: Page, trials, higher: bool, name: str) -> None:
    """Dodge et al. 2019: the expected best validation score of n trials drawn from the completed ones."""
    page.heading("Expected best validation score against the number of trials", 3)
    values = np.array([t.value for t in trials])
    curve = pd.DataFrame({"trials": np.arange(1, len(values) + 1), "expected best": expected_maximum(values, higher)})
    curve["band low"], curve["band high"] = expected_maximum_band(values, higher)
    page.text(
        f"The expected best of n trials drawn at random from the {len(values)} completed ones (Dodge et al. 2019, "
        '"Show your work"), with a 95% bootstrap band over resamples of the trials. A curve still rising at the '
        "right says more trials would likely pay; a flat one, that they would not. Pruned trials have no final "
        "score and are left out, so the curve is that of trials good enough to finish."
    )
    shown_at = [n for n in EXPECTED_AT if n < len(values)] + [len(values)]
    page.table(curve[curve["trials"].isin(shown_at)], number_formats(curve))
    page.figure(
        figures.expected_best_figure(curve),
        f"expected-best-{name}",
        "Expected best validation score of n trials, with a 95% bootstrap band",
    )


def seed_spread_section(page: Page, best) -> None:
    """The best trials' spread over their seeds, beside their gaps to the best trial."""
    scored = [(t, list((TrialRecord.of(t).seed_scores or {}).values())) for t in best]
    scored = [(t, s) for t, s in scored if len(s) > 1]
    if not scored:
        page.text(
            "Each trial trained one seed, so the table cannot say how much of the gaps between the trials is seed "
            "noise: `--seeds-per-trial K` trains each on K seeds, `--confirm-top N` retrains the best on fresh ones."
        )
        return
    page.text(
        "Spread over each trial's seeds (standard deviation, n-1), beside its gap to the best trial's mean: a gap "
        "smaller than the spread is within seed noise."
    )
    top = best[0].value
    spread = pd.DataFrame(
        [
            {
                "trial": t.number,
                "seeds": len(s),
                "mean": float(np.mean(s)),
                "std": float(np.std(s, ddof=1)),
                "min": min(s),
                "max": max(s),
                "gap to best": t.value - top,
            }
            for t, s in scored
        ]
    )
    page.table(spread, number_formats(spread))


def winners_curse_section(page: Page, confirmation: dict | None) -> None:
    """Each confirmed trial's search value against its mean on fresh seeds, and the winner."""
    if not confirmation:
        return
    seeds = confirmation["seeds"]
    page.heading("The winner's curse: search value against confirmed value", 3)
    rows = []
    for row in confirmation["trials"]:
        scores = list(row["scores"].values())
        sd = float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan")
        rows.append(
            {
                "trial": row["trial"],
                "search": row["search"],
                "confirmed mean": row["mean"] if scores else float("nan"),
                "std": sd,
                "seeds": len(scores),
                "confirmed - search": (row["mean"] - row["search"]) if scores else float("nan"),
                "in stds": (row["mean"] - row["search"]) / sd if len(scores) > 1 and sd > 0 else float("nan"),
            }
        )
    page.text(
        f"The {len(rows)} best trials of the search, retrained on {len(seeds)} fresh seeds ({seeds[0]}-{seeds[-1]}; "
        "validation only, test is not read). The best of many noisy scores is biased upward: the search value of "
        "the top trials overstates what they score on other seeds, by the 'confirmed - search' column."
    )
    table = pd.DataFrame(rows)
    page.table(table, number_formats(table))
    winner = confirmation.get("winner")
    if winner is None:
        page.text("No trial is confirmed on every seed yet: rerun the search command to finish the confirmation.")
        return
    sentence = f"Confirmed winner: trial {winner}, the best mean over the fresh seeds"
    comparison = confirmation.get("comparison")
    if comparison:
        runner_up = confirmation["runner_up"]
        sentence += (
            f"; against the runner-up, trial {runner_up}, its mean paired difference is "
            f"{comparison['mean_diff']:+.4f} "
            + (
                f"(95% t-interval {comparison['ci_low']:+.4f} to {comparison['ci_high']:+.4f}, paired t-test "
                f"p = {comparison['p_t']:.3f}, over {comparison['n']} seeds)"
                if comparison["testable"]
                else f"({comparison['why']})"
            )
        )
    page.text(sentence + ". `ggt-search evaluate --from-study` trains this one.")


def number_formats(frame: pd.DataFrame) -> list[str]:
    """Per column: integers as integers (a trial number, a count), other numbers to 4 decimals."""
    return [".0f" if pd.api.types.is_integer_dtype(frame[c]) else ".4f" for c in frame.columns]

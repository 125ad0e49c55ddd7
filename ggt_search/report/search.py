"""A search study's sections of a report: the optimisation history, parameter importances with their
spread, the best configurations, and a GraphGym-style rank analysis. A search chooses configs by
validation score, so its sections show validation scores alone, never test."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from ggt_search.errors import UserError
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.report import figures
from ggt_search.report.page import Page


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
    dataset = record.summary or record.dataset or {"name": "?"}  # a search written before StudyRecord has no summary
    page.text(
        f"Dataset {dataset['name']}; {record.epochs or '?'} epochs per trial at most; sampler "
        f"{record.sampler or '?'}, pruner {record.pruner or '?'}; hardware: {', '.join(hardware)}. "
        f"Command: {record.command or 'not recorded'}"
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
    page.table(
        pd.DataFrame(
            [
                {"trial": t.number, "valid": t.value, "parameters": TrialRecord.of(t).parameters, **t.params}
                for t in best
            ]
        )
    )

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

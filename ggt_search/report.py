"""`ggt-search report`: a self-contained HTML page and a Markdown file per set of studies.

Ablation studies get, per variant: validation and test scores over seeds (mean, 95% CI),
the paired difference to the baseline over matching seeds with a paired t-test and a
Wilcoxon signed-rank test, Holm-corrected across variants, learning curves, cost, and a
one-line verdict. Search studies get the optimisation history, parameter importances,
the best configurations, and a GraphGym-style rank analysis of each design dimension.
Test scores appear only in the ablation sections, which are final evaluations of fixed
configs; search sections use validation scores alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from scipy import stats  # noqa: E402

from ggt_search.errors import UserError  # noqa: E402
from ggt_search.record import TrialRecord  # noqa: E402
from ggt_search.runner import open_storage  # noqa: E402

ALPHA = 0.05


# ----------------------------------------------------------------------------- statistics


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def paired_comparison(variant: np.ndarray, baseline: np.ndarray) -> dict:
    """Mean paired difference with its 95% t-interval, paired t-test and Wilcoxon p-values."""
    diff = variant - baseline
    n = len(diff)
    mean = float(diff.mean())
    if n < 2 or np.allclose(diff, diff[0]):
        return {"n": n, "mean_diff": mean, "ci_low": mean, "ci_high": mean, "p_t": 1.0 if np.allclose(diff, 0) else 0.0, "p_wilcoxon": 1.0}
    half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)
    p_t = float(stats.ttest_rel(variant, baseline).pvalue)
    p_w = float(stats.wilcoxon(variant, baseline).pvalue) if np.any(diff != 0) else 1.0
    return {"n": n, "mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half, "p_t": p_t, "p_wilcoxon": p_w}


def verdict(row: dict, higher_is_better: bool) -> str:
    n = row["n"]
    if row["p_holm"] >= ALPHA:
        return f"no detectable effect at {n} seeds (difference {row['mean_diff']:+.4f}, 95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}])"
    better = (row["mean_diff"] > 0) == higher_is_better
    return f"{'helps' if better else 'hurts'} ({row['mean_diff']:+.4f}, 95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], Holm p = {row['p_holm']:.3g}, {n} seeds)"


# ----------------------------------------------------------------------------- the page


class Page:
    """Sections of Markdown-ish content, rendered to report.md and a self-contained index.html."""

    def __init__(self, out: Path, title: str):
        self.out, self.title = out, title
        self.parts: list[tuple[str, str]] = []  # (kind, content)
        out.mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2):
        self.parts.append(("heading", f"{level}|{text}"))

    def text(self, text: str):
        self.parts.append(("text", text))

    def table(self, frame: pd.DataFrame):
        self.parts.append(("table", frame.to_markdown(index=False, floatfmt=".4f")))
        self.parts.append(("html", frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0)))

    def figure(self, fig, name: str, caption: str):
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.parts.append(("figure", f"{name}.png|{caption}"))

    def write(self):
        md, body = [f"# {self.title}", ""], []
        for kind, content in self.parts:
            if kind == "heading":
                level, text = content.split("|", 1)
                md += ["#" * int(level) + " " + text, ""]
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif kind == "text":
                md += [content, ""]
                body.append(f"<p>{html.escape(content)}</p>")
            elif kind == "table":
                md += [content, ""]
            elif kind == "html":
                body.append(content)
            else:
                file, caption = content.split("|", 1)
                md += [f"![{caption}]({file})", "", f"*{caption}*", ""]
                data = base64.b64encode((self.out / file).read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
        (self.out / "report.md").write_text("\n".join(md))
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
                 "img{max-width:100%}figcaption{color:#555;font-size:90%}pre{background:#f5f5f5;padding:1em;overflow-x:auto}")
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(body)}</body></html>"
        (self.out / "index.html").write_text(page)


# ----------------------------------------------------------------------------- ablation sections


def ablation_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.of(t)
        rows.append({"variant": t.params["variant"], "seed": t.params["seed"], "valid": t.value, "test": record.test,
                     "parameters": record.parameters, "seconds_per_epoch": record.seconds_per_epoch,
                     "best_epoch": record.best_epoch, "curve": record.curve})
    return pd.DataFrame(rows)


def ablation_sections(page: Page, study: optuna.Study) -> None:
    info = study.user_attrs["ablation"]
    dataset = study.user_attrs["dataset"]
    metric = dataset["metric"]
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    frame = ablation_frame(study)
    if frame.empty:
        raise UserError(f"study {study.study_name} has no finished runs yet; run `ggt-search ablate` first")
    order = ["baseline", *[v for v in info["variants"] if v in set(frame.variant)]]
    page.heading(f"Ablation: {info['idea']} ({study.study_name})")
    if info.get("question"):
        page.text(info["question"])
    page.text(f"Dataset {dataset['name']} ({dataset['graphs']} graphs, metric {metric}, "
              f"{'higher' if higher else 'lower'} is better). Each variant changes one thing of the baseline; "
              f"seeds {info['seeds']}; same epoch budget for all; no pruning.")

    rows = []
    base = frame[frame.variant == "baseline"].set_index("seed")
    for variant in order[1:]:
        own = frame[frame.variant == variant].set_index("seed")
        seeds = sorted(set(own.index) & set(base.index))
        if not seeds:
            continue
        row = {"variant": variant, **paired_comparison(own.loc[seeds, "test"].to_numpy(), base.loc[seeds, "test"].to_numpy())}
        row["p_valid_t"] = paired_comparison(own.loc[seeds, "valid"].to_numpy(), base.loc[seeds, "valid"].to_numpy())["p_t"]
        rows.append(row)
    comparison = pd.DataFrame(rows)
    if not comparison.empty:
        comparison["p_holm"] = holm(comparison["p_t"].tolist())
        comparison["verdict"] = [verdict(r, higher) for r in comparison.to_dict("records")]

    page.heading("Verdicts", 3)
    for r in comparison.to_dict("records"):
        page.text(f"{r['variant']} vs baseline: {r['verdict']}")

    page.heading("Scores per variant (final evaluation: validation-selected epoch, test scored once)", 3)
    summary = frame.groupby("variant").agg(
        seeds=("seed", "count"), valid_mean=("valid", "mean"), valid_std=("valid", "std"),
        test_mean=("test", "mean"), test_std=("test", "std"), parameters=("parameters", "first"),
        seconds_per_epoch=("seconds_per_epoch", "mean")).reindex(order).reset_index()
    page.table(summary)
    long = frame.melt(id_vars=["variant", "seed"], value_vars=["valid", "test"], var_name="split", value_name=metric)
    grid = sns.catplot(data=long, x="variant", y=metric, col="split", order=order, kind="strip", color="0.4", alpha=0.6, height=3.6, aspect=1.3)
    for ax, split in zip(grid.axes.flat, ["valid", "test"]):
        sns.pointplot(data=long[long.split == split], x="variant", y=metric, order=order, errorbar=("ci", 95), color="C3",
                      linestyle="none", markers="D", ax=ax)
        ax.tick_params(axis="x", rotation=30)
    page.figure(grid.figure, "scores", f"{metric} per variant over seeds: points are seeds; diamonds mean with 95% CI")

    if not comparison.empty:
        page.heading("Paired differences to the baseline (test, matching seeds)", 3)
        page.table(comparison[["variant", "n", "mean_diff", "ci_low", "ci_high", "p_t", "p_wilcoxon", "p_holm", "p_valid_t"]])
        diffs = []
        for variant in comparison.variant:
            own = frame[frame.variant == variant].set_index("seed")
            seeds = sorted(set(own.index) & set(base.index))
            diffs += [{"variant": variant, "difference": own.loc[s, "test"] - base.loc[s, "test"]} for s in seeds]
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(comparison)))
        sns.stripplot(data=pd.DataFrame(diffs), y="variant", x="difference", color="0.4", ax=ax)
        sns.pointplot(data=pd.DataFrame(diffs), y="variant", x="difference", errorbar=("ci", 95), color="C3", linestyle="none", markers="D", ax=ax)
        ax.axvline(0, color="0.2", lw=1)
        ax.set_xlabel(f"test {metric}: variant - baseline (same seed)")
        page.figure(fig, "differences", "Paired differences to the baseline; diamonds mean with 95% CI; the line is no effect")

    page.heading("Learning curves (validation)", 3)
    curves = [{"variant": r.variant, "seed": r.seed, "epoch": e + 1, metric: v} for r in frame.itertuples() for e, v in enumerate(r.curve)]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=pd.DataFrame(curves), x="epoch", y=metric, hue="variant", hue_order=order, errorbar=("ci", 95), ax=ax)
    page.figure(fig, "curves", f"Validation {metric} per epoch, mean over seeds with 95% CI")

    page.heading("Cost", 3)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    sns.barplot(data=summary, x="variant", y="parameters", order=order, color="C0", ax=axes[0])
    sns.barplot(data=frame, x="variant", y="seconds_per_epoch", order=order, color="C1", errorbar=("ci", 95), ax=axes[1])
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    page.figure(fig, "cost", "Parameters and seconds per epoch per variant")


# ----------------------------------------------------------------------------- search sections


def search_sections(page: Page, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise UserError(f"study {study.study_name} has no completed trial yet")
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    page.heading(f"Search: {study.study_name}")
    states = pd.Series([t.state.name.lower() for t in study.trials]).value_counts().to_dict()
    page.text(f"{len(study.trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); objective: validation metric, "
              f"{'maximised' if higher else 'minimised'}. Test labels are not read during search.")

    history = pd.DataFrame({"trial": [t.number for t in trials], "value": [t.value for t in trials]})
    history["best so far"] = history["value"].cummax() if higher else history["value"].cummin()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.scatterplot(data=history, x="trial", y="value", color="0.5", ax=ax, label="trial")
    sns.lineplot(data=history, x="trial", y="best so far", color="C3", drawstyle="steps-post", ax=ax, label="best so far")
    ax.set_ylabel("validation metric")
    page.heading("Optimisation history", 3)
    page.figure(fig, "history", "Validation metric of each completed trial, and the best so far")

    page.heading("Parameter importances (fANOVA)", 3)
    if len(trials) >= 4:
        importances = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        frame = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * len(frame)))
        sns.barplot(data=frame, y="parameter", x="importance", color="C0", ax=ax)
        page.figure(fig, "importances", "Share of the validation metric's variance explained by each parameter")
    else:
        page.text("Fewer than 4 completed trials: importances are not estimated.")

    page.heading("Best configurations", 3)
    best = sorted(trials, key=lambda t: t.value, reverse=higher)[:5]
    page.table(pd.DataFrame([{"trial": t.number, "valid": t.value, "parameters": TrialRecord.of(t).parameters, **t.params} for t in best]))

    page.heading("Design-space ranks (GraphGym-style)", 3)
    ranks = design_ranks(trials, higher)
    if ranks.empty:
        page.text("Not enough comparable trials for a rank analysis.")
    else:
        page.text("For each design dimension, trials are grouped by the values of every other categorical dimension; within a "
                  "group holding two or more choices of the dimension, choices are ranked by their best validation metric "
                  "(1 = best). Lower mean rank = a better choice, other things equal.")
        page.table(ranks.groupby(["dimension", "choice"])["rank"].agg(["mean", "count"]).reset_index())
        grid = sns.catplot(data=ranks, x="choice", y="rank", col="dimension", kind="violin", sharex=False, col_wrap=3, height=2.8, cut=0)
        page.figure(grid.figure, "ranks", "Distribution of each choice's rank among otherwise matched trials")


def design_ranks(trials, higher: bool) -> pd.DataFrame:
    frame = pd.DataFrame([{**{k: str(v) for k, v in t.params.items() if isinstance(v, (str, bool)) or isinstance(t.distributions[k], optuna.distributions.CategoricalDistribution)}, "value": t.value} for t in trials])
    dims = [c for c in frame.columns if c != "value" and frame[c].nunique() > 1]
    rows = []
    for dim in dims:
        others = [d for d in dims if d != dim]
        groups = frame.fillna("-").groupby(others) if others else [(None, frame)]
        for _, group in groups:
            best = group.groupby(dim)["value"].max() if higher else group.groupby(dim)["value"].min()
            if len(best) < 2:
                continue
            for choice, rank in best.rank(ascending=not higher, method="average").items():
                rows.append({"dimension": dim, "choice": choice, "rank": rank})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- entry point


def reproducibility(page: Page, studies: list[optuna.Study], storage: str) -> None:
    """Where the runs ran, as each run recorded it when it ran (not the machine writing the report)."""
    page.heading("Reproducibility")
    page.text(f"storage: {storage}")
    for s in studies:
        if "command" in s.user_attrs:
            page.text(f"{s.study_name}: {s.user_attrs['command']}")
        if "dataset" in s.user_attrs:
            d = s.user_attrs["dataset"]
            page.text(f"{s.study_name}: dataset {d['name']}, sha256 {d.get('checksum', '?')}, split {d['split']}")
        if "ablation" in s.user_attrs:
            page.text(f"{s.study_name}: seeds {s.user_attrs['ablation']['seeds']}")
    keys = ("commit", "torch", "torch_geometric", "optuna", "device", "hardware", "threads")
    groups = pd.DataFrame([{"study": s.study_name, **{k: str((TrialRecord.of(t).environment or {}).get(k, "not recorded")) for k in keys}}
                           for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
    if not groups.empty:
        page.heading("Code, packages and hardware of the runs (as recorded by each run)", 3)
        page.table(groups.groupby(["study", *keys]).size().reset_index(name="runs"))


def build_report(names: list[str], storage: str, out: Path) -> Path:
    store = open_storage(storage, must_exist=True)
    known = {s.study_name for s in optuna.get_all_study_summaries(store)}
    missing = [n for n in names if n not in known]
    if missing:
        raise UserError(f"no study named {', '.join(missing)} in {storage}; studies there: {', '.join(sorted(known)) or 'none'}")
    studies = [optuna.load_study(study_name=n, storage=store) for n in names]
    sns.set_theme(style="whitegrid", context="notebook")
    page = Page(out, f"ggt-search report: {', '.join(names)}")
    for study in studies:
        if study.user_attrs.get("kind") == "ablation":
            ablation_sections(page, study)
        else:
            search_sections(page, study)
    reproducibility(page, studies, storage)
    page.write()
    return out / "index.html"

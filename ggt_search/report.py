"""`ggt-search report`: a self-contained HTML page and a Markdown file per set of studies.

Ablations (one study per dataset, reported together): per dataset and variant, validation
and test over seeds; the paired difference to the baseline over matching seeds with its
95% t-interval and the family-adjusted interval, paired t-test and Wilcoxon p-values,
Holm-corrected over every comparison of the report, and what the seeds could detect
(power); a verdict that never claims more than the runs support; learning curves; ranks
within (dataset, seed) cells; every run left out, with its reason; each run's provenance.
Search studies get the optimisation history, parameter importances with their spread,
the best configurations, and a GraphGym-style rank analysis. Test scores appear only in
the ablation sections, which are final evaluations of fixed configs; search sections use
validation scores alone.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from ggt_search.ablate import BASELINE, run_pair  # noqa: E402
from ggt_search.errors import UserError  # noqa: E402
from ggt_search.metrics import WIDEST_DIFFERENCE  # noqa: E402
from ggt_search.record import StudyRecord, TrialRecord  # noqa: E402
from ggt_search.storage import open_storage  # noqa: E402

# Published test ROC-AUC (x 100, mean +- std over 10 seeds) of a 5-layer GIN without pre-training on OGB's
# scaffold splits (Hu et al., ICLR 2020, table 1): a yardstick for the baselines of the CPU suite.
PUBLISHED_GIN = {"ogbg-molbbbp": (65.8, 4.5), "ogbg-moltox21": (74.0, 0.8), "ogbg-moltoxcast": (63.4, 0.6), "ogbg-molsider": (57.3, 1.6),
                 "ogbg-molclintox": (58.0, 4.4), "ogbg-molmuv": (71.8, 2.5), "ogbg-molhiv": (75.3, 1.9), "ogbg-molbace": (70.1, 5.4)}
ALPHA = 0.05  # family-wise error rate of each report's verdicts
POWER = 0.8  # the power at which detectable effects are stated


# ----------------------------------------------------------------------------- statistics


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def holm_levels(p_values: list[float], alpha: float = ALPHA) -> list[float]:
    """The level at which Holm's step-down tests each hypothesis, in the input order: alpha / (m - i)
    for the i-th smallest p (from 0) while every smaller p was rejected; from the first step that
    fails on, that step's level (Holm stops there). So a two-sided test at its level rejects exactly
    when the Holm-adjusted p is below alpha, and the t-interval at 1 - level excludes 0 exactly then."""
    order = np.argsort(p_values, kind="stable")  # the order `holm` steps through
    m = len(p_values)
    levels = np.empty(m)
    stopped = None
    for rank, index in enumerate(order):
        if stopped is None and p_values[index] >= alpha / (m - rank):
            stopped = alpha / (m - rank)
        levels[index] = alpha / (m - rank) if stopped is None else stopped
    return levels.tolist()


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The mean's t-interval; (mean, mean) when fewer than 2 values say nothing of the spread."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    return mean_interval(mean, float(np.std(values, ddof=1)), len(values), level)


def mean_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """The t-interval of a mean of n values with sample standard deviation sd."""
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)
    return mean - half, mean + half


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha to detect a true mean difference `effect`."""
    df, shift = n - 1, effect / (sd / np.sqrt(n))
    critical = stats.t.ppf(1 - alpha / 2, df)
    # The far tail underflows to NaN for large shifts, where it is 0 anyway.
    return float(stats.nct.sf(critical, df, shift) + np.nan_to_num(stats.nct.cdf(-critical, df, shift)))


def detectable_effect(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """The smallest true difference the paired t-test detects with `target` power, for this n and spread."""
    return float(optimize.brentq(lambda effect: power(effect, sd, n, alpha) - target, 1e-12 * sd, 1000 * sd))


def seeds_needed(effect: float, sd: float, alpha: float, target: float = POWER, most: int = 1000) -> int | None:
    """Paired seeds for `target` power against `effect`, if the observed spread holds (None: more than `most`)."""
    return next((n for n in range(2, most + 1) if power(effect, sd, n, alpha) >= target), None)


def paired_comparison(variant: np.ndarray, baseline: np.ndarray, family: int = 1, effect: float | None = None) -> dict:
    """Mean paired difference, its 95% t-interval, the paired t-test and Wilcoxon p-values, and the
    power analysis at the Bonferroni level of a family of `family` comparisons (Holm's strictest
    step). With fewer than two pairs, or differences without spread, nothing is testable and no
    p-value is given. The family-adjusted interval needs the whole family: `compare` adds it."""
    diff = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diff)
    row = {"n": n, "mean_diff": float(diff.mean()) if n else float("nan"), "testable": False}
    if n < 2:
        return row | {"why": f"{n} paired seed{'s' if n != 1 else ''}; a paired test needs at least 2"}
    sd = float(diff.std(ddof=1))
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):  # float noise is no spread
        return row | {"why": f"all {n} seeds gave the same difference ({diff[0]:+.4f}): no spread to test against"}
    row |= {"testable": True, "sd": sd}
    row["ci_low"], row["ci_high"] = t_interval(diff)
    row["p_t"] = float(stats.ttest_rel(variant, baseline).pvalue)
    row["p_wilcoxon"] = float(stats.wilcoxon(variant, baseline).pvalue) if np.any(diff != 0) else 1.0
    row["detectable"] = detectable_effect(sd, n, ALPHA / family)
    if effect is not None:
        row["seeds_for_effect"] = seeds_needed(effect, sd, ALPHA / family)
    return row


def verdict(row: dict, higher_is_better: bool, effect: float | None) -> str:
    if not row["testable"]:
        return f"not testable ({row['why']})"
    interval = (f"{row['mean_diff']:+.4f}, 95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], "
                f"family-adjusted CI [{row['adj_low']:+.4f}, {row['adj_high']:+.4f}]")
    if row["p_holm"] < ALPHA:
        better = (row["mean_diff"] > 0) == higher_is_better
        return f"{'helps' if better else 'hurts'} ({interval}, Holm p = {row['p_holm']:.3g}, {row['n']} seeds)"
    text = f"no detectable effect at {row['n']} seeds ({interval}); with this spread, {row['n']} seeds "
    widest = row.get("widest")
    if widest is not None and row["detectable"] > widest:  # e.g. ±3.6 ROC-AUC: no real effect could show
        text += f"cannot detect even the largest difference the metric allows (±{widest:g}): this comparison needs more seeds"
    else:
        text += f"detect (80% power) only differences of ±{row['detectable']:.4f} or more"
    if effect is not None:
        needed = row.get("seeds_for_effect")
        text += f"; ±{effect:g} would need {'more than 1000' if needed is None else f'about {needed}'} seeds"
    return text


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


@dataclass
class AblationRuns:
    """One dataset's runs of an ablation: the finished ones, and every run that is not."""

    study: optuna.Study
    dataset: str
    metric: str
    higher: bool
    info: dict  # the ablation as stored with the study (question, baseline, variants, seeds, effect)
    runs: pd.DataFrame  # one row per finished (variant, seed)
    problems: pd.DataFrame  # runs that failed, were pruned, are still running or waiting, or duplicate another

    @property
    def order(self) -> list[str]:
        return [BASELINE, *[v for v in self.info["variants"] if v in set(self.runs.variant)]]


def ablation_runs(study: optuna.Study) -> AblationRuns:
    rows, problems, seen = [], [], set()
    for t in study.get_trials(deepcopy=False):
        variant, seed = run_pair(t)
        record = TrialRecord.of(t)
        if t.state != TrialState.COMPLETE or (variant, seed) in seen:
            reason = "a duplicate of a finished run (kept out)" if t.state == TrialState.COMPLETE else record.reason or ""
            if variant is not None and not reason.startswith("surplus"):
                problems.append({"variant": variant, "seed": seed, "trial": t.number, "state": t.state.name.lower(), "reason": reason})
            continue
        seen.add((variant, seed))
        rows.append({"variant": variant, "seed": seed, "valid": t.value, "test": record.test, "parameters": record.parameters,
                     "seconds_per_epoch": record.seconds_per_epoch, "best_epoch": record.best_epoch, "curve": record.curve})
    described = StudyRecord.of(study)
    return AblationRuns(study, described.summary["name"], described.metric, described.direction == "maximize",
                        described.ablation, pd.DataFrame(rows), pd.DataFrame(problems))


def compare(datasets: list[AblationRuns]) -> pd.DataFrame:
    """Every variant against the baseline on every dataset, over matching seeds; Holm over the whole family."""
    family = sum(len(d.order) - 1 for d in datasets)
    rows = []
    for d in datasets:
        by_seed = {v: d.runs[d.runs.variant == v].set_index("seed") for v in d.order}
        base = by_seed[BASELINE]
        for variant in d.order[1:]:
            seeds = sorted(set(by_seed[variant].index) & set(base.index))
            own = by_seed[variant].loc[seeds]
            test = paired_comparison(own["test"].to_numpy(), base.loc[seeds, "test"].to_numpy(), family, d.info.get("effect"))
            valid = paired_comparison(own["valid"].to_numpy(), base.loc[seeds, "valid"].to_numpy(), family)
            rows.append({"dataset": d.dataset, "variant": variant, **test, "valid_diff": valid["mean_diff"], "p_valid": valid.get("p_t"),
                         "higher": d.higher, "effect": d.info.get("effect"), "widest": WIDEST_DIFFERENCE.get(d.metric)})
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
    page.text(f"Datasets: {', '.join(d.dataset for d in datasets)}. Each variant changes one thing of the baseline; seeds "
              f"{info['seeds']}; every run has the same epoch budget, no pruning; validation picks each run's epoch, and "
              f"test is scored once, with that epoch's weights.")
    comparison = compare(datasets)
    verdict_section(page, comparison, len(datasets))
    for d in datasets:
        dataset_sections(page, d, comparison[comparison.dataset == d.dataset])
    if len(datasets) > 1 or len(info["seeds"]) > 1:
        rank_section(page, datasets)
    configuration_section(page, datasets)
    runs = pd.concat([d.runs.drop(columns="curve").assign(dataset=d.dataset) for d in datasets])
    runs[["dataset", "variant", "seed", "valid", "test", "best_epoch", "parameters", "seconds_per_epoch"]].to_csv(page.out / "runs.csv", index=False)
    page.text("Every finished run, one row per (dataset, variant, seed): runs.csv beside this report.")


def verdict_section(page: Page, comparison: pd.DataFrame, datasets: int) -> None:
    page.heading("Verdicts", 3)
    testable = int(comparison["testable"].sum()) if not comparison.empty else 0
    page.text(f"Paired t-tests on test over matching seeds, Holm-corrected over all {testable} testable comparisons"
              f"{f' on {datasets} datasets' if datasets > 1 else ''} (family-wise error {ALPHA}). The 95% CI is each "
              f"difference's own. The family-adjusted CI goes with the Holm decision: it is the t-interval at the level "
              f"Holm's step-down test used for that comparison (1 - {ALPHA}/(m - i + 1) for the i-th smallest p; after the "
              f"step where Holm stops, that step's level), so it excludes 0 exactly when Holm's test finds a difference. "
              f"Bonferroni's intervals (level 1 - {ALPHA}/m for all) are as wide as the smallest p's and, unlike these, cover "
              f"all differences at once with 95% probability. Detectable effects are stated at Bonferroni's level. "
              f"'No detectable effect' is not 'no effect': it says how large an effect the seeds rule out.")
    for r in comparison.to_dict("records"):
        where = f" on {r['dataset']}" if datasets > 1 else ""
        page.text(f"{r['variant']} vs baseline{where}: {r['verdict']}")


def dataset_sections(page: Page, d: AblationRuns, comparison: pd.DataFrame) -> None:
    metric, order = d.metric, d.order
    page.heading(f"{d.dataset}: scores per variant ({metric}, {'higher' if d.higher else 'lower'} is better)", 3)
    summary = d.runs.groupby("variant").agg(
        seeds=("seed", "count"), valid_mean=("valid", "mean"), valid_std=("valid", "std"), test_mean=("test", "mean"),
        test_std=("test", "std"), best_epoch=("best_epoch", "mean"), parameters=("parameters", "first"),
        seconds_per_epoch=("seconds_per_epoch", "mean")).reindex(order).reset_index()
    page.table(summary)
    if d.dataset in PUBLISHED_GIN:
        mean, std = PUBLISHED_GIN[d.dataset]
        base = d.runs.loc[d.runs.variant == BASELINE, "test"]
        page.text(f"For scale: Hu et al. (2020) report {mean} ± {std} test ROC-AUC (x 100) for a 5-layer GIN without "
                  f"pre-training on the same scaffold split; this baseline scores {100 * base.mean():.1f} ± {100 * base.std():.1f} "
                  f"over {len(base)} seeds.")
    slug = Path(d.dataset).stem
    page.figure(scores_figure(d), f"scores-{slug}", f"{metric} per variant: dots are seeds; bars the mean with its 95% t-interval")
    if comparison.empty:
        return
    page.heading(f"{d.dataset}: paired differences to the baseline (test, matching seeds)", 3)
    columns = ["variant", "n", "mean_diff", "ci_low", "ci_high", "adj_low", "adj_high", "p_t", "p_wilcoxon", "p_holm", "detectable"]
    if comparison["effect"].notna().any():
        columns.append("seeds_for_effect")
    page.table(comparison.reindex(columns=columns))
    page.figure(differences_figure(comparison, metric), f"differences-{slug}",
                "Paired test differences to the baseline: the 95% CI (thick) and the family-adjusted CI (thin), as in the table; "
                "the line is no effect")
    page.heading(f"{d.dataset}: validation and test", 3)
    for r in comparison.to_dict("records"):
        if r["testable"] and np.sign(r["valid_diff"]) != np.sign(r["mean_diff"]):
            page.text(f"{r['variant']}: validation and test disagree in sign (valid {r['valid_diff']:+.4f}, test {r['mean_diff']:+.4f}); "
                      f"the validation set is small or the effect is within noise.")
    page.table(comparison.reindex(columns=["variant", "valid_diff", "p_valid", "mean_diff", "p_t"]).rename(columns={"mean_diff": "test_diff", "p_t": "p_test"}))
    page.figure(curves_figure(d), f"curves-{slug}", f"Validation {metric} per epoch: mean over seeds with its 95% t-interval")


def scores_figure(d: AblationRuns):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    for ax, split in zip(axes, ["valid", "test"]):
        for x, variant in enumerate(d.order):
            values = d.runs.loc[d.runs.variant == variant, split].to_numpy()
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + offsets, values, color="0.5", s=14, zorder=2)
            low, high = t_interval(values)
            ax.errorbar(x + 0.3, values.mean(), yerr=[[values.mean() - low], [high - values.mean()]], fmt="D", color="C3", capsize=3, zorder=3)
        ax.set_xticks(range(len(d.order)), d.order, rotation=30, ha="right")
        ax.set_title(split)
        ax.set_ylabel(d.metric)
    return fig


def differences_figure(comparison: pd.DataFrame, metric: str):
    rows = comparison[comparison.testable]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.5 * max(len(rows), 1)))
    for y, r in enumerate(rows.to_dict("records")):
        ax.plot([r["adj_low"], r["adj_high"]], [y, y], color="C3", lw=1)
        ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="C3", lw=4)
        ax.plot(r["mean_diff"], y, "D", color="k")
    ax.set_yticks(range(len(rows)), rows.variant)
    ax.axvline(0, color="0.2", lw=1)
    ax.set_xlabel(f"test {metric}: variant - baseline (same seed)")
    return fig


def curves_figure(d: AblationRuns):
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, variant in enumerate(d.order):
        curves = d.runs.loc[d.runs.variant == variant, "curve"].tolist()
        epochs = min(len(c) for c in curves)
        values = np.array([c[:epochs] for c in curves])
        bands = np.array([t_interval(values[:, e]) for e in range(epochs)])
        ax.plot(range(1, epochs + 1), values.mean(0), color=f"C{i % 10}", label=variant)
        ax.fill_between(range(1, epochs + 1), bands[:, 0], bands[:, 1], color=f"C{i % 10}", alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {d.metric}")
    ax.legend(fontsize=8)
    return fig


def rank_section(page: Page, datasets: list[AblationRuns]) -> None:
    """GraphGym-style: within each (dataset, seed) cell, rank the variants by test score (1 = best)."""
    rows = []
    for d in datasets:
        for seed, cell in d.runs.groupby("seed"):
            ranks = cell.set_index("variant")["test"].rank(ascending=not d.higher, method="average")
            rows += [{"dataset": d.dataset, "seed": seed, "variant": v, "rank": r} for v, r in ranks.items()]
    ranks = pd.DataFrame(rows)
    order = datasets[0].order
    page.heading("Ranks across (dataset, seed) cells", 3)
    page.text("Within each cell (one dataset, one seed) the variants are ranked by their test score, 1 = best, ties averaged. "
              "A variant that helps everywhere ranks low everywhere; the spread shows how much the ranking depends on the cell.")
    page.table(ranks.groupby("variant")["rank"].agg(["mean", "median", "count"]).reindex(order).reset_index())
    counts = ranks.assign(rank=ranks["rank"].round().astype(int)).pivot_table(index="variant", columns="rank", values="seed", aggfunc="count", fill_value=0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * counts.shape[1], 0.8 + 0.4 * len(counts)))
    sns.heatmap(counts.reindex(order), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set_xlabel("rank in its (dataset, seed) cell (1 = best)")
    page.figure(fig, "ranks", "How often each variant took each rank")


def configuration_section(page: Page, datasets: list[AblationRuns]) -> None:
    info = datasets[0].info
    page.heading("Run configuration", 3)
    baseline = info["baseline"]
    page.text("Baseline (model and training): " + ", ".join(f"{k}={v}" for k, v in {**baseline["model"], **baseline["train"]}.items()
                                                            if k not in ("seed", "device")))
    page.text("Variants: " + "; ".join(f"{name}: {change}" for name, change in info["variants"].items()))
    for d in datasets:
        sizes = d.runs.groupby("variant")["parameters"].first().reindex(d.order)
        base = sizes[BASELINE]
        differing = [f"{v} ({int(n):,})" for v, n in sizes.items() if v != BASELINE and n != base]
        if differing:
            page.text(f"{d.dataset}: the baseline has {int(base):,} parameters; variants of another size: {', '.join(differing)}. "
                      f"A size change is part of what such a variant changes.")
        if not d.problems.empty:
            page.text(f"{d.dataset}: runs not in the statistics (failed, pruned, unfinished or duplicated):")
            page.table(d.problems)


# ----------------------------------------------------------------------------- search sections


def search_sections(page: Page, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise UserError(f"study {study.study_name} has no completed trial yet")
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    record, name = StudyRecord.of(study), study.study_name
    page.heading(f"Search: {name}")
    states = pd.Series([t.state.name.lower() for t in study.trials]).value_counts().to_dict()
    page.text(f"{len(study.trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); objective: validation "
              f"{record.metric or 'metric'}, {'maximised' if higher else 'minimised'}. "
              f"Test labels are not read during search.")
    hardware = sorted({f"{(TrialRecord.of(t).environment or {}).get('hardware', '?')} ({(TrialRecord.of(t).environment or {}).get('device', '?')})"
                       for t in trials})
    dataset = record.summary or record.dataset or {"name": "?"}  # a search written before StudyRecord has no summary
    page.text(f"Dataset {dataset['name']}; {record.epochs or '?'} epochs per trial at most; sampler "
              f"{record.sampler or '?'}, pruner {record.pruner or '?'}; hardware: {', '.join(hardware)}. "
              f"Command: {record.command or 'not recorded'}")

    history = pd.DataFrame({"trial": [t.number for t in trials], "value": [t.value for t in trials]})
    history["best so far"] = history["value"].cummax() if higher else history["value"].cummin()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.scatter(history["trial"], history["value"], color="0.5", s=14, label="trial")
    ax.step(history["trial"], history["best so far"], where="post", color="C3", label="best so far")
    ax.legend()
    ax.set_ylabel("validation metric")
    page.heading("Optimisation history", 3)
    page.figure(fig, f"history-{name}", "Validation metric of each completed trial, and the best so far")

    page.heading("Parameter importances (fANOVA)", 3)
    if len(trials) >= 4:
        if len(trials) < 20:
            page.text(f"Warning: only {len(trials)} completed trials. Importances from fewer than about 20 are unstable: "
                      f"read them as a hint, not a ranking.")
        frame = pd.DataFrame([optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
                              for seed in range(5)])
        summary = pd.DataFrame({"parameter": frame.columns, "importance": frame.mean(), "std over 5 forests": frame.std()})
        summary = summary.sort_values("importance", ascending=False)
        page.table(summary)
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * len(summary)))
        ax.barh(summary["parameter"], summary["importance"], xerr=summary["std over 5 forests"], color="C0")
        ax.invert_yaxis()
        ax.set_xlabel("importance")
        page.figure(fig, f"importances-{name}", "Share of the validation metric's variance explained by each parameter: the mean "
                    "over 5 random forests, with their standard deviation")
    else:
        page.text("Fewer than 4 completed trials: importances are not estimated.")

    page.heading("Best configurations", 3)
    best = sorted(trials, key=lambda t: t.value, reverse=higher)[:5]
    page.table(pd.DataFrame([{"trial": t.number, "valid": t.value, "parameters": TrialRecord.of(t).parameters, **t.params} for t in best]))

    page.heading("Design-space ranks (GraphGym-style)", 3)
    ranks = design_ranks(trials, higher)
    controlled = any("design_group" in t.user_attrs for t in trials)
    if ranks.empty:
        page.text("No two completed trials differ in one design dimension only, so no choice can be ranked with the others "
                  "fixed. A controlled design makes such groups: `ggt-search search --sampler controlled`.")
        return
    groups = ranks.groupby(["dimension", "group"]).ngroups
    page.text(("Groups from a controlled design (`--sampler controlled`): each group varies one dimension and repeats every "
               "other parameter, trained with a seed of its own. " if controlled else
               "Groups of trials that match in every other categorical parameter (this sampler does not make them on "
               "purpose; `--sampler controlled` does). ") +
              f"Within each of the {groups} groups, the dimension's choices are ranked by validation metric (1 = best, ties "
              "averaged). A lower mean rank over many groups = a better choice, other things equal; with few groups per "
              "dimension, read the ranks as a hint.")
    page.table(ranks.groupby(["dimension", "choice"])["rank"].agg(["mean", "count"]).rename(columns={"count": "groups"}).reset_index())
    grid = sns.catplot(data=ranks, x="choice", y="rank", col="dimension", kind="strip", sharex=False, col_wrap=3, height=2.8,
                       jitter=0.15, alpha=0.6)
    page.figure(grid.figure, f"design-ranks-{name}", "Each choice's rank within each group that varied its dimension (1 = best)")


def design_ranks(trials, higher: bool) -> pd.DataFrame:
    """GraphGym's rank analysis (You et al. 2020): within each group of trials that differ in
    one design dimension only, rank that dimension's choices by the validation metric.
    Groups are a controlled design's (user attrs design_group / design_dimension) when the
    study has them; otherwise trials that match in every other categorical parameter."""
    controlled = [t for t in trials if "design_group" in t.user_attrs]
    if controlled:
        frame = pd.DataFrame([{"group": t.user_attrs["design_group"], "dimension": t.user_attrs["design_dimension"],
                               "choice": str(t.params.get(t.user_attrs["design_dimension"])), "value": t.value} for t in controlled])
        frame = frame.drop_duplicates(["group", "choice"])  # a retried trial repeats its group's choice
        grouped = [(dimension, group, part.set_index("choice")["value"]) for (dimension, group), part in frame.groupby(["dimension", "group"])]
    else:
        categorical = [{k: str(v) for k, v in t.params.items() if isinstance(t.distributions[k], optuna.distributions.CategoricalDistribution)}
                       | {"value": t.value} for t in trials]
        frame = pd.DataFrame(categorical).fillna("-")
        dimensions = [c for c in frame.columns if c != "value" and frame[c].nunique() > 1]
        grouped = []
        for dimension in dimensions:
            others = [d for d in dimensions if d != dimension]
            for number, (_, part) in enumerate(frame.groupby(others) if others else [(None, frame)]):
                best = part.groupby(dimension)["value"].max() if higher else part.groupby(dimension)["value"].min()
                grouped.append((dimension, number, best))
    rows = [{"dimension": dimension, "group": group, "choice": choice, "rank": rank}
            for dimension, group, values in grouped if len(values) >= 2
            for choice, rank in values.rank(ascending=not higher, method="average").items()]
    return pd.DataFrame(rows, columns=["dimension", "group", "choice", "rank"])


# ----------------------------------------------------------------------------- entry point


def reproducibility(page: Page, studies: list[optuna.Study], storage: str) -> None:
    """Where the runs ran, as each run recorded it when it ran (not the machine writing the report)."""
    page.heading("Reproducibility")
    page.text(f"storage: {storage}")
    for s in studies:
        record = StudyRecord.of(s)
        if record.command:
            page.text(f"{s.study_name}: {record.command}")
        if d := record.summary or record.dataset:  # split sizes, or the split rule (a search from before StudyRecord)
            page.text(f"{s.study_name}: dataset {d['name']}, sha256 {record.checksum or 'not recorded'}, "
                      f"split {d['split']}")
        if record.ablation:
            page.text(f"{s.study_name}: seeds {record.ablation['seeds']}")
    groups = pd.DataFrame([{"study": s.study_name, **run_provenance(TrialRecord.of(t))}
                           for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
    if not groups.empty:
        page.heading("Code, packages, hardware and starting weights of the runs (as recorded by each run)", 3)
        page.table(groups.groupby(list(groups.columns)).size().reset_index(name="runs"))


def run_provenance(record: TrialRecord) -> dict[str, str]:
    environment = record.environment or {}
    keys = ("commit", "torch", "torch_geometric", "optuna", "device", "hardware", "threads")
    fine_tuned = ((record.config or {}).get("train") or {}).get("init")
    return {k: str(environment.get(k, "not recorded")) for k in keys} | {
        "init": f"{fine_tuned}, sha256 {environment.get('init_sha256', 'not recorded')[:12]}" if fine_tuned else "from scratch"}


def build_report(names: list[str], storage: str, out: Path) -> Path:
    """A report of each named search study or ablation (an ablation on several datasets is one name, its group)."""
    store = open_storage(storage, must_exist=True)
    summaries = optuna.get_all_study_summaries(store)
    groups = {name: [s.study_name for s in summaries if (StudyRecord.of(s).group or s.study_name) == name]
              for name in names}
    missing = [name for name, members in groups.items() if not members]
    if missing:
        known = sorted({StudyRecord.of(s).group or s.study_name for s in summaries})
        raise UserError(f"no study named {', '.join(missing)} in {storage}; studies there: {', '.join(known) or 'none'}")
    sns.set_theme(style="whitegrid", context="notebook")
    page = Page(out, f"ggt-search report: {', '.join(names)}")
    studies = []
    for members in groups.values():
        loaded = [optuna.load_study(study_name=n, storage=store) for n in sorted(members)]
        studies += loaded
        if StudyRecord.of(loaded[0]).kind == "ablation":
            ablation_sections(page, loaded)
        else:
            search_sections(page, loaded[0])
    reproducibility(page, studies, storage)
    page.write()
    return out / "index.html"

"""A report's figures. Each is drawn on a matplotlib Figure of its own, without pyplot: no backend to
pick, no window to close; `Page.figure` writes it as PNG, which matplotlib renders with Agg."""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ggt_search.metrics import WIDEST_DIFFERENCE
from ggt_search.report.statistics import t_interval


@contextmanager
def report_style():
    """seaborn's whitegrid look for the figures drawn inside, and matplotlib's settings as they were after."""
    with matplotlib.rc_context():
        sns.set_theme(style="whitegrid", context="notebook")
        yield


def score_interval(values: np.ndarray, metric: str) -> tuple[float, float]:
    """The mean's 95% t-interval, clipped to the scores the metric can take (ROC-AUC and AP in [0, 1], errors
    >= 0): with two seeds an interval may reach past them, and a score axis above 1 reads as a broken figure."""
    low, high = t_interval(values)
    return max(low, 0.0), min(high, WIDEST_DIFFERENCE.get(metric, np.inf))


def variant_colours(count: int) -> list:
    """One colour per variant, none repeated: matplotlib's ten, or evenly spaced hues beyond ten."""
    return sns.color_palette("tab10" if count <= 10 else "husl", count)


def scores_figure(runs: pd.DataFrame, order: list[str], metric: str) -> Figure:
    """Validation and test score of each run per variant (a row each, so that 19 names stay legible), with
    each variant's mean and 95% t-interval."""
    fig = Figure(figsize=(11, 1.2 + 0.32 * len(order)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, split in zip(axes, ["valid", "test"]):
        for y, variant in enumerate(order):
            values = runs.loc[runs.variant == variant, split].to_numpy()
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(values, y + offsets, color="0.5", s=14, zorder=2)
            low, high = score_interval(values, metric)
            ax.errorbar(
                values.mean(),
                y - 0.3,
                xerr=[[values.mean() - low], [high - values.mean()]],
                fmt="D",
                color="C3",
                capsize=3,
                zorder=3,
            )
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.7)  # the first variant (the baseline) on top
        ax.set_title(split)
        ax.set_xlabel(metric)
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {
    "helps": "#1a9850",
    "hurts": "#d73027",
    "equivalent": "#4575b4",
    "inconclusive": "0.55",
    "suspect": "#f39c12",
    "not testable": "0.8",
}


def within_view(ends: pd.DataFrame) -> pd.DataFrame:
    """Interval ends with an infinite one (at 2 seeds half the sign patterns have no spread) drawn to just
    past the finite ends: an axis has no infinity."""
    finite = ends.to_numpy()[np.isfinite(ends.to_numpy())]
    low, high = (finite.min(), finite.max()) if len(finite) else (-1.0, 1.0)
    pad = 0.1 * (high - low or 1.0)
    return ends.clip(low - pad, high + pad)


def differences_figure(comparison: pd.DataFrame, metric: str) -> Figure:
    """Each testable paired difference: its mean, 95% CI (thick) and simultaneous interval (thin)."""
    rows = comparison[comparison.testable].copy()
    rows[["sim_low", "sim_high"]] = within_view(rows[["sim_low", "sim_high"]])
    fig = Figure(figsize=(7, 0.8 + 0.5 * max(len(rows), 1)))
    ax = fig.subplots()
    for y, r in enumerate(rows.to_dict("records")):
        ax.plot([r["sim_low"], r["sim_high"]], [y, y], color="C3", lw=1)
        ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="C3", lw=4)
        ax.plot(r["mean_diff"], y, "D", color="k")
    ax.set_yticks(range(len(rows)), rows.variant)
    ax.axvline(0, color="0.2", lw=1)
    ax.set_xlabel(f"test {metric}: variant - baseline (same seed)")
    return fig


def forest_figure(
    comparison: pd.DataFrame, pooled: pd.DataFrame | None, datasets: list[str], ideas: list[str], marks: dict
) -> Figure:
    """One panel per dataset (its own units) and one pooled (d), a row per idea: the effect and its interval,
    coloured by verdict, over the grey ±margin band and the line of no effect. + is better in every panel."""
    panels = [*datasets, "pooled"] if pooled is not None else datasets
    fig = Figure(figsize=(2.9 * len(panels) + 1.2, max(1.8, 0.8 + 0.145 * len(ideas))))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "pooled":
            rows = pooled.set_index("variant")
            points = {v: (r.effect, r.low, r.high, r.verdict) for v, r in rows.iterrows() if r.datasets}
            ax.set_title("pooled: d (+ better)", fontsize=9)
        else:
            rows = comparison[(comparison.dataset == panel) & comparison.testable].set_index("variant")
            rows[["sim_low", "sim_high"]] = within_view(rows[["mean_diff", "sim_low", "sim_high"]])[
                ["sim_low", "sim_high"]
            ]
            sign = np.where(rows.higher, 1, -1)  # errors (RMSE) flipped so that + is better everywhere
            points = {
                v: (s * r.mean_diff, *sorted((s * r.sim_low, s * r.sim_high)), r.verdict)
                for (v, r), s in zip(rows.iterrows(), sign)
            }
            if len(rows):
                ax.axvspan(-rows.margin.iloc[0], rows.margin.iloc[0], color="0.9", zorder=0)
            ax.set_title(f"{panel}{'' if rows.higher.all() else ' (-RMSE)'}", fontsize=9)
        for y, idea in enumerate(ideas):
            if idea in points:
                effect, low, high, verdict = points[idea]
                colour = VERDICT_COLOURS[verdict]
                ax.plot([low, high], [y, y], color=colour, lw=2)
                ax.plot(effect, y, "o", color=colour, ms=4)
        ax.axvline(0, color="0.2", lw=0.8)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(len(ideas)), ideas)
    axes[0].set_ylim(len(ideas) - 0.5, -0.5)  # the first idea on top, as in the table
    handles = [Line2D([], [], color=c, lw=2, label=f"{marks[v]} {v}") for v, c in VERDICT_COLOURS.items()]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1)
    )
    fig.tight_layout()
    return fig


def curves_figure(runs: pd.DataFrame, order: list[str], metric: str) -> Figure:
    """Validation score per epoch of each variant: the mean over seeds with its 95% t-interval; the legend
    beside the axes, where it covers no curve."""
    fig = Figure(figsize=(7 + (2 if len(order) > 12 else 0), 4))
    ax = fig.subplots()
    styles = ["-", "--", ":"] if len(order) > 10 else ["-"]  # neighbouring hues of many variants differ in dash
    for i, (variant, colour) in enumerate(zip(order, variant_colours(len(order)))):
        curves = runs.loc[runs.variant == variant, "curve"].tolist()
        epochs = min(len(c) for c in curves)
        values = np.array([c[:epochs] for c in curves])
        bands = np.array([score_interval(values[:, e], metric) for e in range(epochs)])
        ax.plot(range(1, epochs + 1), values.mean(0), color=colour, ls=styles[i % len(styles)], label=variant)
        ax.fill_between(range(1, epochs + 1), bands[:, 0], bands[:, 1], color=colour, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=2 if len(order) > 12 else 1)
    return fig


def rank_counts_figure(counts: pd.DataFrame) -> Figure:
    """How often each variant (row) took each rank (column), as an annotated heat map."""
    fig = Figure(figsize=(1.2 + 0.5 * counts.shape[1], 0.8 + 0.4 * len(counts)))
    ax = fig.subplots()
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.tick_params(axis="y", labelrotation=0)  # variant names read across, not up the page
    ax.set_xlabel("rank in its (dataset, seed) cell (1 = best)")
    return fig


def history_figure(history: pd.DataFrame) -> Figure:
    """Each completed trial's validation metric, and the best so far."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.scatter(history["trial"], history["value"], color="0.5", s=14, label="trial")
    ax.step(history["trial"], history["best so far"], where="post", color="C3", label="best so far")
    ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted, never 0.2 of one
    ax.set_xlabel("trial")
    ax.set_ylabel("validation metric")
    return fig


def importances_figure(summary: pd.DataFrame) -> Figure:
    """Each parameter's importance with its spread over forests, the most important on top."""
    fig = Figure(figsize=(7, 0.6 + 0.35 * len(summary)))
    ax = fig.subplots()
    ax.barh(summary["parameter"], summary["importance"], xerr=summary["std over 5 forests"], color="C0")
    ax.invert_yaxis()
    ax.set_xlabel("importance")
    return fig


def design_ranks_figure(ranks: pd.DataFrame, wrap: int = 3, size: float = 2.8) -> Figure:
    """One strip plot per design dimension: each choice's rank within each group that varied it."""
    dimensions = list(ranks["dimension"].unique())
    columns, rows = min(wrap, len(dimensions)), -(-len(dimensions) // wrap)
    fig = Figure(figsize=(size * columns, size * rows))
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).flatten()
    for ax, dimension in zip(axes, dimensions):
        sns.stripplot(data=ranks[ranks["dimension"] == dimension], x="choice", y="rank", jitter=0.15, alpha=0.6, ax=ax)
        ax.set_title(f"dimension = {dimension}")
    for ax in axes[len(dimensions) :]:
        ax.remove()
    fig.tight_layout()
    return fig


def expected_best_figure(curve: pd.DataFrame) -> Figure:
    """The expected best validation score over n trials, with its bootstrap band."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.fill_between(curve["trials"], curve["band low"], curve["band high"], color="C0", alpha=0.25, label="95% band")
    ax.plot(curve["trials"], curve["expected best"], color="C0", label="expected best")
    ax.legend(loc="lower right")
    ax.set_xlabel("trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a number of trials is whole
    ax.set_ylabel("validation metric")
    return fig

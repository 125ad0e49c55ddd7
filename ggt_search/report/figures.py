"""A report's figures. Each is drawn on a matplotlib Figure of its own, without pyplot: no backend to
pick, no window to close; `Page.figure` writes it as PNG, which matplotlib renders with Agg."""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
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


def differences_figure(comparison: pd.DataFrame, metric: str) -> Figure:
    """Each testable paired difference: its mean, 95% CI (thick) and family-adjusted CI (thin)."""
    rows = comparison[comparison.testable]
    fig = Figure(figsize=(7, 0.8 + 0.5 * max(len(rows), 1)))
    ax = fig.subplots()
    for y, r in enumerate(rows.to_dict("records")):
        ax.plot([r["adj_low"], r["adj_high"]], [y, y], color="C3", lw=1)
        ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="C3", lw=4)
        ax.plot(r["mean_diff"], y, "D", color="k")
    ax.set_yticks(range(len(rows)), rows.variant)
    ax.axvline(0, color="0.2", lw=1)
    ax.set_xlabel(f"test {metric}: variant - baseline (same seed)")
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

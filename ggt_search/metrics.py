"""Task losses and OGB metrics.

Official OGB names are scored by OGB's own `Evaluator`; other datasets by the same rules
(ROC-AUC and AP averaged over tasks that have both classes among labelled entries, RMSE
and MAE over labelled entries), so a number means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

HIGHER_IS_BETTER = {"rocauc": True, "ap": True, "rmse": False, "mae": False}
WIDEST_DIFFERENCE = {"rocauc": 1.0, "ap": 1.0}  # two scores in [0, 1]; RMSE and MAE have no bound


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether `value` is a strictly better score than `than` under `metric`: higher for ROC-AUC
    and AP, lower for RMSE and MAE."""
    return value > than if HIGHER_IS_BETTER[metric] else value < than


def study_direction(metric: str) -> str:
    """The Optuna study direction whose best trial has the best `metric`."""
    return "maximize" if HIGHER_IS_BETTER[metric] else "minimize"


def masked_loss(logits: torch.Tensor, y: torch.Tensor, task_type: str) -> torch.Tensor:
    """BCE-with-logits (classification) or MSE (regression), averaged over labelled entries only.

    Missing labels are weighted out rather than indexed out, so the loss has no
    data-dependent shape and no host sync (a CUDA graph can hold it).
    """
    labelled = ~torch.isnan(y)
    y = torch.where(labelled, y, 0.0)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 logits: the loss in fp32
    if task_type == "classification":
        per_entry = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    else:
        per_entry = (logits - y) ** 2
    return torch.where(labelled, per_entry, 0.0).sum() / labelled.sum()


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray, dataset: str | None = None) -> float:
    from ggt_search.sources.ogb import OGB_DATASETS

    if dataset in OGB_DATASETS:
        from ogb.graphproppred import Evaluator

        return float(Evaluator(dataset).eval({"y_true": y_true, "y_pred": y_pred})[metric])
    return _score(metric, y_true, y_pred)


def _score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if metric in ("rmse", "mae"):  # per task over its labelled entries, then averaged over tasks, as OGB does
        per_task = []
        for task in range(y_true.shape[1]):
            labelled = ~np.isnan(y_true[:, task])
            errors = y_pred[labelled, task] - y_true[labelled, task]
            per_task.append(np.sqrt(np.mean(errors**2)) if metric == "rmse" else np.mean(np.abs(errors)))
        return float(np.mean(per_task))
    rank_metric = roc_auc_score if metric == "rocauc" else average_precision_score
    per_task = []
    for task in range(y_true.shape[1]):
        labelled = ~np.isnan(y_true[:, task])
        truth = y_true[labelled, task]
        if (truth == 1).any() and (truth == 0).any():
            per_task.append(rank_metric(truth, y_pred[labelled, task]))
    if not per_task:
        raise ValueError(f"no task has both classes among labelled entries; {metric} is undefined")
    return float(np.mean(per_task))


TRIVIAL = "the trivial baseline (every molecule predicted as the training labels' mean)"


def trivial_score(graphs, split: str) -> float:
    """The split's metric for a model that predicts the training labels' mean for every molecule.

    What a model must beat to have learned anything: for regression the RMSE of the mean,
    for ROC-AUC 0.5, for AP each task's positive rate.
    """
    y = graphs.y.numpy()
    train_mean = np.nan_to_num(np.nanmean(y[graphs.split["train"].numpy()], axis=0))
    truth = y[graphs.split[split].numpy()]
    return score(graphs.metric, truth, np.broadcast_to(train_mean, truth.shape).copy(), graphs.name)

"""Every score plaintune reports, computed with torchmetrics over a whole set at once.

Regression (STS): Pearson and Spearman correlation; with a binary column in the
file (KLUE-STS's `binary-label`: 1 where label >= 3), also F1 and accuracy of
`prediction >= threshold` against it. Classification: accuracy and macro-F1.
`training.metric` picks the one best/, top-k, early stopping and a plateau
scheduler follow; `loss` (the dev loss) is the only one where lower is better.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

METRICS = ("pearson", "spearman", "f1", "accuracy", "loss")
LOWER_IS_BETTER = ("loss",)


def followed_metric(requested: str, num_labels: int) -> str:
    """training.metric with `auto` resolved: pearson for regression, accuracy for classification."""
    if requested == "auto":
        return "pearson" if num_labels == 1 else "accuracy"
    return requested


def _correlation(kind: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman; nan when either side is constant (a correlation is undefined there)."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    preds = torch.from_numpy(np.array(predictions, dtype=np.float64))  # a copy: inputs may be read-only
    target = torch.from_numpy(np.array(labels, dtype=np.float64))
    if len(preds) < 2 or not torch.isfinite(preds).all() or float(preds.std()) == 0.0 or float(target.std()) == 0.0:
        return float("nan")
    function = pearson_corrcoef if kind == "pearson" else spearman_corrcoef
    return float(function(preds, target))


def _classification(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and F1 (binary: of class 1; more classes: macro) of class ids."""
    from torchmetrics.functional import accuracy, f1_score

    preds, truth = torch.as_tensor(predicted, dtype=torch.long), torch.as_tensor(target, dtype=torch.long)
    if len(preds) == 0:
        return {"f1": float("nan"), "accuracy": float("nan")}
    if num_classes == 2:
        return {
            "f1": float(f1_score(preds, truth, task="binary")),
            "accuracy": float(accuracy(preds, truth, task="binary")),
        }
    return {
        "f1": float(f1_score(preds, truth, task="multiclass", num_classes=num_classes, average="macro")),
        "accuracy": float(accuracy(preds, truth, task="multiclass", num_classes=num_classes)),
    }


def compute_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    binary: Optional[np.ndarray] = None,
    threshold: float = 3.0,
) -> dict[str, float]:
    """All metrics of final predictions (scores, or class ids for classification) against labels.

    `binary`: the file's 0/1 column, if it has one; F1 and accuracy then score
    `prediction >= threshold` against it. Non-finite predictions never count as
    class 1, and make the correlations nan.
    """
    predictions = np.asarray(predictions)
    if num_labels > 1:
        return _classification(predictions, np.asarray(labels).astype(np.int64), num_labels)
    metrics = {
        "pearson": _correlation("pearson", predictions, labels),
        "spearman": _correlation("spearman", predictions, labels),
    }
    if binary is not None:
        positive = np.isfinite(predictions) & (np.nan_to_num(predictions, nan=-np.inf) >= threshold)
        metrics.update(_classification(positive.astype(np.int64), np.asarray(binary).astype(np.int64), 2))
    return metrics


def shown(metrics: dict) -> str:
    """One console fragment: 'pearson 0.8512  spearman 0.8433  loss 0.0123'."""
    return "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def score(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """The headline metric: Pearson for regression, accuracy for classification."""
    return compute_metrics(predictions, labels, num_labels)[followed_metric("auto", num_labels)]


def is_better(value: float, best: Optional[float], metric: str = "pearson") -> bool:
    """Whether `value` of `metric` beats `best`. Only a finite value can be best: a NaN or inf one
    (a diverged model, constant predictions) never is, not even the first; a finite one beats any
    non-finite best."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def gain(value: float, best: float, metric: str) -> float:
    """How much `value` improves on `best` (positive: better), whichever direction the metric has."""
    return best - value if metric in LOWER_IS_BETTER else value - best

"""Metrics: torchmetrics' values equal the textbook definitions, and training.metric decides what is kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import train
from plaintune.recipe.metrics import compute_metrics, followed_metric, is_better
from plaintune.training.trainer import Trainer


def reference_pearson(x, y) -> float:
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def reference_spearman(x, y) -> float:
    """Pearson of the ranks, ties sharing their mean rank (the definition)."""
    return reference_pearson(pd.Series(x).rank(method="average"), pd.Series(y).rank(method="average"))


def reference_f1(predicted, truth) -> float:
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    tp = int(((predicted == 1) & (truth == 1)).sum())
    fp = int(((predicted == 1) & (truth == 0)).sum())
    fn = int(((predicted == 0) & (truth == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


CASES = {
    "random": (np.random.default_rng(0).normal(2.5, 1.2, 200), np.random.default_rng(1).uniform(0, 5, 200)),
    "ties": (np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.5, 4.0, 4.0]), np.array([0.0, 1.0, 1.0, 3.0, 2.0, 5.0, 4.0, 4.0])),
    "monotone_not_linear": (np.exp(np.linspace(0, 4, 30)), np.linspace(0, 5, 30)),
}


@pytest.mark.parametrize("case", CASES)
def test_regression_metrics_equal_their_definitions(case):
    predictions, labels = CASES[case]
    binary = (labels >= 3).astype(int)
    metrics = compute_metrics(predictions, labels, 1, binary, threshold=3.0)
    assert metrics["pearson"] == pytest.approx(reference_pearson(predictions, labels), abs=1e-6)
    assert metrics["spearman"] == pytest.approx(reference_spearman(predictions, labels), abs=1e-6)
    positive = (predictions >= 3.0).astype(int)
    assert metrics["f1"] == pytest.approx(reference_f1(positive, binary), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((positive == binary).mean()), abs=1e-6)
    if case == "monotone_not_linear":
        assert metrics["spearman"] == pytest.approx(1.0) and metrics["pearson"] < 0.95


def test_constant_or_non_finite_predictions_give_nan_correlations_never_best():
    labels = np.array([0.0, 1.0, 2.0, 4.0])
    for predictions in (np.full(4, 2.5), np.array([1.0, np.nan, 2.0, 3.0]), np.array([0.0, np.inf, 1.0, 2.0])):
        metrics = compute_metrics(predictions, labels, 1, np.array([0, 0, 0, 1]))
        assert np.isnan(metrics["pearson"]) and np.isnan(metrics["spearman"])
        assert not is_better(metrics["pearson"], None)
    # a NaN prediction never counts as class 1
    assert compute_metrics(np.array([np.nan, 4.0]), np.array([4.0, 4.0]), 1, np.array([1, 1]))["accuracy"] == 0.5
    assert "f1" not in compute_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]), 1)  # no binary column


def test_classification_accuracy_and_macro_f1():
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0, 2])
    metrics = compute_metrics(predicted, truth, 3)
    per_class = [reference_f1((predicted == c).astype(int), (truth == c).astype(int)) for c in range(3)]
    assert metrics["f1"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(5 / 7)


def test_direction_and_auto():
    assert is_better(0.2, 0.5, "loss") and not is_better(0.5, 0.2, "loss") and is_better(0.5, 0.2, "spearman")
    assert followed_metric("auto", 1) == "pearson" and followed_metric("auto", 3) == "accuracy"
    assert followed_metric("spearman", 1) == "spearman"


def validations(sequence: list[dict]):
    """A stand-in for Trainer.validate scoring `sequence` in turn; no predictions (the report predicts from best/)."""
    values = iter(sequence)
    return lambda self: (dict(next(values)), None)


# Pearson peaks at epoch 2, Spearman at epoch 3, the dev loss is lowest at epoch 1.
STORY = [
    {"pearson": 0.50, "spearman": 0.40, "loss": 0.10},
    {"pearson": 0.70, "spearman": 0.50, "loss": 0.30},
    {"pearson": 0.60, "spearman": 0.80, "loss": 0.20},
]


@pytest.mark.e2e
@pytest.mark.parametrize("metric, best_epoch", [("pearson", 2), ("spearman", 3), ("loss", 1), ("auto", 2)])
def test_training_metric_picks_the_best_epoch(project, monkeypatch, metric, best_epoch):
    monkeypatch.setattr(Trainer, "validate", validations(STORY))
    assert (
        train.main(["--config", "t", "training.epochs=3", f"training.metric={metric}", "checkpoint.keep_top_k=2"]) == 0
    )
    run = project / "saved_model" / "t"
    state = torch.load(run / "last.pt", weights_only=True)["train_state"]
    followed = "pearson" if metric == "auto" else metric
    assert state["best_epoch"] == best_epoch and state["metric"] == followed
    assert state["best_metric"] == STORY[best_epoch - 1][followed]
    assert json.loads((run / "best" / "plaintune_state.json").read_text())["epoch"] == best_epoch
    ranked = sorted(range(3), key=lambda e: STORY[e][followed], reverse=followed != "loss")[:2]
    assert sorted(p.name for p in (run / "top").iterdir()) == sorted(f"epoch-{e + 1:03d}" for e in ranked)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["spearman"] for r in evals if r["kind"] == "eval"] == [0.40, 0.50, 0.80]


@pytest.mark.e2e
def test_resume_with_another_metric_rederives_the_best(project, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "validate", validations(STORY))
    assert train.main(["--config", "t", "training.epochs=2"]) == 0  # pearson: best epoch 2
    assert train.main(["--config", "t", "training.epochs=3", "training.metric=spearman", "--resume"]) == 0
    state = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["train_state"]
    assert (state["metric"], state["best_epoch"], state["best_metric"]) == ("spearman", 3, 0.80)


@pytest.mark.e2e
def test_real_run_reports_every_metric_and_f1_needs_the_binary_column(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "training.metric=f1"]) == 0
    out = capsys.readouterr().out
    assert "dev pearson" in out and "spearman" in out and "f1" in out and "accuracy" in out
    dev = pd.read_csv(project / "data" / "dev.csv").drop(columns=["binary-label"])
    dev.to_csv(project / "data" / "dev.csv", index=False)
    assert train.main(["--config", "t", "training.epochs=1", "training.metric=f1", "run_name=u"]) == 2
    err = capsys.readouterr().err
    assert "training.metric: f1" in err and "binary-label" in err

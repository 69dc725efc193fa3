"""Edges of metrics, reports and resumes that a user meets: unusable binary columns, a plateau on the
dev loss, a report path taken by a file, a trained max_length, a resume with a new learning rate or
from a run written before these options existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train
from plaintune.recipe import optim


def test_plateau_on_the_dev_loss_lowers_the_rate_when_the_loss_rises():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    spec = {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.05}
    scheduler, _ = optim.build_scheduler(spec, optimizer, steps_per_epoch=1, epochs=5, maximize=False)
    for loss in (3.0, 2.0, 1.5):  # improving: the rate stays
        scheduler.step(loss)
    assert optimizer.param_groups[0]["lr"] == 1.0
    scheduler.step(1.6)  # worse: halved
    assert optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.e2e
def test_blank_binary_cells_only_switch_f1_off(project, capsys):
    dev = pd.read_csv(project / "data" / "dev.csv")
    dev["binary-label"] = dev["binary-label"].astype("object")
    dev.loc[:2, "binary-label"] = ""
    dev.to_csv(project / "data" / "dev.csv", index=False)
    train_csv = pd.read_csv(project / "data" / "train.csv")
    train_csv["binary-label"] = ""
    train_csv.to_csv(project / "data" / "train.csv", index=False)
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "note: data.dev_path: no F1/accuracy scores" in out
    evals = [json.loads(line) for line in (project / "saved_model" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert "f1" not in [r for r in evals if r["kind"] == "eval"][0]
    assert train.main(["--config", "t", "training.epochs=1", "run_name=n", "data.columns.binary_label=null"]) == 0


@pytest.mark.e2e
def test_a_file_where_the_report_goes_is_refused_before_any_work(project, capsys):
    from plaintune.rundir import ownership

    run = project / "saved_model" / "rf"
    run.mkdir(parents=True)
    ownership.claim(run, ownership.RUN)  # a run folder of plaintune's, where a file took report/'s place
    (run / "report").write_text("mine")
    assert train.main(["--config", "t", "run_name=rf"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "but that is a file" in err
    assert (run / "report").read_text() == "mine" and not (run / "last.pt").exists()


@pytest.mark.e2e
def test_inference_truncates_to_the_trained_max_length(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "model.max_length=16"]) == 0
    capsys.readouterr()
    common = ["--config", "t", "--saved_model", "t", "inference.round=null", "inference.clip=null"]
    assert inference.main(common) == 0  # the config says 48
    assert "note: model.max_length 16" in capsys.readouterr().out
    auto = pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()
    assert inference.main([*common, "model.max_length=16"]) == 0
    np.testing.assert_array_equal(auto, pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy())


def learning_rates(project) -> list[float]:
    lines = (project / "saved_model" / "t" / "metrics.jsonl").read_text().splitlines()
    return [r["lr"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.e2e
def test_resume_with_a_lower_learning_rate_uses_it(project, capsys):
    constant = "training.scheduler={name: constant}"
    assert train.main(["--config", "t", constant, "training.epochs=1"]) == 0
    assert set(learning_rates(project)) == {1e-3}
    assert (
        train.main(
            ["--config", "t", constant, "training.epochs=2", "training.learning_rate=1e-4", "--resume", "--force"]
        )
        == 0
    )
    assert "training.learning_rate 0.0001 instead of the checkpoint's 0.001" in capsys.readouterr().out
    rates = learning_rates(project)
    assert rates[:3] == [1e-3] * 3 and all(abs(r - 1e-4) < 1e-12 for r in rates[3:])


@pytest.mark.e2e
def test_resume_of_a_run_from_before_the_new_options(project, capsys):
    """A bundle whose config lacks keys added since (binary_label, binary_threshold, metric, ...)
    resumes without --force: a new option at its default is no change."""
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    path = project / "saved_model" / "t" / "last.pt"
    bundle = torch.load(path, weights_only=True)
    config = bundle["config"]
    del config["data"]["columns"]["binary_label"], config["data"]["binary_threshold"]
    del config["training"]["metric"], config["training"]["eval_every_n_steps"]
    bundle["train_state"].pop("metric")
    torch.save(bundle, path)
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "binary" not in out and "training.metric" not in out


@pytest.mark.e2e
def test_changing_the_metric_on_resume_says_what_best_holds(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    assert train.main(["--config", "t", "training.epochs=2", "training.metric=loss", "--resume"]) == 0
    assert "note: now following dev loss instead of pearson" in capsys.readouterr().out

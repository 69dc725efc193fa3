"""training.max_steps: a quick try that stops after N optimizer steps and finishes as a complete run."""

from __future__ import annotations

import json

import pytest
import torch

import train


def bundle(run: str = "t") -> dict:
    return torch.load(f"saved_model/{run}/last.pt", weights_only=True)


def evals(run: str = "t") -> list[dict]:
    lines = open(f"saved_model/{run}/metrics.jsonl", encoding="utf-8").read().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


@pytest.mark.e2e
def test_max_steps_stops_mid_epoch_and_finishes(project, capsys):
    # 48 training pairs in batches of 8: 6 steps per epoch, 12 in 2 epochs; stop after 3
    assert train.main(["--config", "t", "training.max_steps=3"]) == 0
    out = capsys.readouterr().out
    state = bundle()
    assert state["train_state"]["global_step"] == 3 and state["epoch"] == 0
    # the final validation and best/ as at the end of any run
    assert [r["step"] for r in evals()] == [3]
    assert (project / "saved_model" / "t" / "best" / "model.safetensors").is_file()
    assert "training.max_steps" in out and "next: python inference.py" in out
    # the linear schedule spans the 3 steps taken (not 12): it has decayed to zero
    assert state["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.e2e
def test_max_steps_on_an_epoch_boundary_and_with_grad_accum(project):
    assert train.main(["--config", "t", "training.max_steps=6"]) == 0
    assert bundle()["train_state"]["global_step"] == 6 and bundle()["epoch"] == 1
    assert [r["step"] for r in evals()] == [6]
    assert train.main(["--config", "t", "training.max_steps=2", "training.grad_accum_steps=2", "--overwrite"]) == 0
    assert bundle()["train_state"]["global_step"] == 2 and bundle()["train_state"]["step_in_epoch"] == 4


@pytest.mark.e2e
def test_resume_honours_max_steps(project, capsys):
    assert train.main(["--config", "t", "training.max_steps=3"]) == 0
    capsys.readouterr()
    assert train.main(["--config", "t", "training.max_steps=3", "--resume"]) == 0
    assert "nothing left to train (training.max_steps 3 reached)" in capsys.readouterr().out
    assert bundle()["train_state"]["global_step"] == 3 and len(evals()) == 1
    # a larger limit continues the run to it, through the epoch end
    assert train.main(["--config", "t", "training.max_steps=8", "--resume"]) == 0
    state = bundle()
    assert state["train_state"]["global_step"] == 8 and state["epoch"] == 1
    assert [r["step"] for r in evals()] == [3, 6, 8]


@pytest.mark.e2e
def test_kfold_folds_honour_max_steps(project):
    assert train.main(["--config", "t", "training.max_steps=2", "--folds", "2"]) == 0
    for fold in (1, 2):
        assert bundle(f"t-fold{fold}")["train_state"]["global_step"] == 2

"""training.eval_every_n_steps: validations inside an epoch count for best/, top-k, early stopping,
a plateau scheduler, and a killed run resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

HELPER = Path(__file__).with_name("crashing_train.py")


def evals(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["train_state"]


@pytest.mark.e2e
def test_mid_epoch_validations_feed_best_and_top_k(project):
    # 48 rows / batch 8 = 6 steps per epoch; validations at steps 4, 6 (epoch end), 8, 12 (epoch end)
    assert train.main(["--config", "t", "training.eval_every_n_steps=4", "checkpoint.keep_top_k=2"]) == 0
    run = project / "saved_model" / "t"
    records = evals(run)
    assert [(r["step"], r["epoch"]) for r in records] == [(4, 0.6667), (6, 1), (8, 1.3333), (12, 2)]
    state = last_state(run)
    assert [(h["step"], h["epoch"]) for h in state["history"]] == [(r["step"], r["epoch"]) for r in records]
    best = max(state["history"], key=lambda h: h["pearson"])
    assert (state["best_step"], state["best_epoch"], state["best_metric"]) == (
        best["step"],
        best["epoch"],
        best["pearson"],
    )
    meta = json.loads((run / "best" / "plaintune_state.json").read_text())
    assert (meta["global_step"], meta["epoch"]) == (best["step"], best["epoch"])
    names = {4: "step-00000004", 6: "epoch-001", 8: "step-00000008", 12: "epoch-002"}
    top_two = sorted(state["history"], key=lambda h: -h["pearson"])[:2]
    assert sorted(p.name for p in (run / "top").iterdir()) == sorted(names[h["step"]] for h in top_two)


@pytest.mark.e2e
def test_early_stopping_counts_mid_epoch_validations_and_stops_mid_epoch(project, capsys):
    # min_delta no gain reaches: the first validation (step 2) is progress, the second (step 4) is not
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=3",
                "training.eval_every_n_steps=2",
                "training.early_stopping.patience=1",
                "training.early_stopping.min_delta=10",
            ]
        )
        == 0
    )
    run = project / "saved_model" / "t"
    assert [r["step"] for r in evals(run)] == [2, 4]
    state = last_state(run)
    assert state["stopped_early"] and state["global_step"] == 4 and (state["epoch"], state["step_in_epoch"]) == (0, 4)
    assert "early stopping" in capsys.readouterr().out
    # a resume of a run that stopped early trains nothing more
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=3",
                "training.eval_every_n_steps=2",
                "training.early_stopping.patience=1",
                "training.early_stopping.min_delta=10",
                "--resume",
            ]
        )
        == 0
    )
    assert last_state(run)["global_step"] == 4 and [r["step"] for r in evals(run)] == [2, 4]


@pytest.mark.e2e
def test_plateau_scheduler_steps_at_every_validation(project):
    plateau = "training.scheduler={name: plateau, patience: 0, factor: 0.5}"
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=1",
                "training.eval_every_n_steps=2",
                plateau,
                "training.early_stopping.patience=null",
            ]
        )
        == 0
    )
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    # validations at steps 2, 4, 6: the scheduler saw three metrics
    assert bundle["scheduler_state_dict"]["last_epoch"] == 3


def run_helper(cwd: Path, args: list[str], plan: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_PLAN": plan, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(HELPER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.e2e
def test_sigkill_between_validations_then_resume_from_another_cwd_is_bit_identical(project, tmp_path):
    """Runs on a 'mounted drive' (an output_dir outside the project), killed mid-epoch between
    validations and resumed from another working directory, end where an uninterrupted run ends."""
    drive = tmp_path / "drive" / "runs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = {
        f"data.{key}": str(project / "data" / name)
        for key, name in (
            ("train_path", "train.csv"),
            ("dev_path", "dev.csv"),
            ("predict_path", "test.csv"),
            ("submission_template", "sample_submission.csv"),
        )
    }
    # 6 steps per epoch, 3 epochs: validations at 5, 6, 10, 12, 15, 18; last.pt every 4 steps and each epoch end
    common = [
        "--config",
        str(project / "configs" / "t.yaml"),
        f"output_dir={drive}",
        "training.epochs=3",
        "training.eval_every_n_steps=5",
        "checkpoint.every_n_steps=4",
        *[f"{key}={value}" for key, value in data.items()],
    ]
    reference = run_helper(project, [*common, "run_name=ref"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    args = [*common, "run_name=crash"]
    for cwd, plan in ((project, "step:7"), (elsewhere, "step:3"), (elsewhere, "")):
        result = run_helper(cwd, args, plan)
        if plan:  # step 7: after the step-5 validation and the epoch-end save; then step 9 (after the step-8 save)
            assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        else:
            assert result.returncode == 0, result.stderr[-2000:]
        args = [*common, "run_name=crash", "--resume"]

    ref, got = drive / "ref", drive / "crash"
    ref_bundle = torch.load(ref / "last.pt", weights_only=True)
    got_bundle = torch.load(got / "last.pt", weights_only=True)
    for key, tensor in ref_bundle["model_state_dict"].items():
        assert torch.equal(tensor, got_bundle["model_state_dict"][key]), f"{key} differs after resume"
    assert got_bundle["train_state"]["history"] == ref_bundle["train_state"]["history"]
    clock = {"samples_per_s", "train_samples_per_s", "eval_s", "time"}
    story = [{k: v for k, v in r.items() if k not in clock} for r in evals(got)]
    assert story == [{k: v for k, v in r.items() if k not in clock} for r in evals(ref)]
    assert [r["step"] for r in story] == [5, 6, 10, 12, 15, 18]
    assert not (project / "saved_model").exists() and not (elsewhere / "saved_model").exists()


@pytest.mark.e2e
def test_a_signal_at_a_step_with_a_due_validation_still_validates(project):
    """SIGTERM arrives in the step after which a validation is due: the validation runs before the
    run stops, so the resumed run has the same validations, best/ and top/ as an uninterrupted one."""
    common = ["--config", "t", "training.eval_every_n_steps=4", "checkpoint.keep_top_k=2", "checkpoint.every_n_steps=3"]
    assert run_helper(project, [*common, "run_name=ref"]).returncode == 0
    stopped = run_helper(project, [*common, "run_name=sig"], "sigterm:4")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert run_helper(project, [*common, "run_name=sig", "--resume"]).returncode == 0
    ref, got = project / "saved_model" / "ref", project / "saved_model" / "sig"
    clock = {"samples_per_s", "train_samples_per_s", "eval_s", "time"}
    story = [{k: v for k, v in r.items() if k not in clock} for r in evals(got)]
    assert story == [{k: v for k, v in r.items() if k not in clock} for r in evals(ref)]
    assert [r["step"] for r in story] == [4, 6, 8, 12]
    assert sorted(p.name for p in (got / "top").iterdir()) == sorted(p.name for p in (ref / "top").iterdir())
    assert last_state(got)["best_step"] == last_state(ref)["best_step"]

"""Checkpoints you can trust: real SIGKILLs and Ctrl-C, then resume to a bit-identical result."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from conftest import base_config, write_config

HELPER = Path(__file__).with_name("crashing_train.py")
# 48 train rows / batch 8 = 6 steps per epoch; 3 epochs = 18 steps; a mid-epoch save every 4 steps.
RUN = ["--config", "t", "training.epochs=3", "checkpoint.every_n_steps=4"]


def run_helper(project: Path, args: list[str], plan: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_PLAN": plan, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(HELPER), *RUN, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def bundle(project: Path, run: str) -> dict:
    return torch.load(project / "saved_model" / run / "last.pt", weights_only=True)


def story(project: Path, run: str) -> list[tuple]:
    """metrics.jsonl without wall-clock fields."""
    clock = {"samples_per_s", "train_samples_per_s", "eval_s", "time"}
    lines = (project / "saved_model" / run / "metrics.jsonl").read_text().splitlines()
    return [tuple(sorted((k, v) for k, v in json.loads(line).items() if k not in clock)) for line in lines]


def assert_same_run(project: Path, reference: str, other: str) -> None:
    ref, got = bundle(project, reference), bundle(project, other)
    assert got["epoch"] == ref["epoch"] == 3
    assert got["train_state"]["global_step"] == ref["train_state"]["global_step"] == 18
    for key, tensor in ref["model_state_dict"].items():
        assert torch.equal(tensor, got["model_state_dict"][key]), f"{key} differs after resume"
    assert story(project, other) == story(project, reference)
    steps = [(dict(r)["kind"], dict(r)["step"]) for r in story(project, other)]
    assert len(steps) == len(set(steps)), "a step was logged twice"


@pytest.mark.e2e
def test_sigkill_anywhere_then_resume_is_bit_identical(project):
    reference = run_helper(project, ["run_name=ref"])
    assert reference.returncode == 0, reference.stderr

    # Each process of the crashing run dies at another kind of point; each restart resumes.
    plans = [
        ("step:10", "mid-epoch, two steps after the step-8 checkpoint"),
        ("validate:1", "at the epoch boundary, before the epoch-end save"),
        ("save:2", "in the middle of writing a checkpoint"),
        ("step:3", "mid-epoch again, after resuming from an epoch-end bundle"),
        ("", "to the end"),
    ]
    args = ["run_name=crash"]
    for plan, where in plans:
        result = run_helper(project, args, plan)
        if plan:
            assert result.returncode == -signal.SIGKILL, f"{where}: {result.returncode} {result.stderr[-2000:]}"
            bundle(project, "crash")  # the newest complete checkpoint is always loadable
        else:
            assert result.returncode == 0, result.stderr[-2000:]
        args = ["run_name=crash", "--resume"]
    assert not list((project / "saved_model" / "crash").glob(".*.tmp")), "stale temporaries were not cleaned"
    assert_same_run(project, "ref", "crash")


@pytest.mark.e2e
def test_ctrl_c_or_sigterm_saves_and_resume_finishes_the_same_run(project):
    """Ctrl-C (SIGINT) and SIGTERM (what Colab, SLURM and Kubernetes send before a kill) alike:
    finish the step, write last.pt, print the resume command, exit 128 + the signal number."""
    assert run_helper(project, ["run_name=ref"]).returncode == 0
    for plan, run, status, name in (("sigint:9", "int", 130, "SIGINT"), ("sigterm:9", "term", 143, "SIGTERM")):
        result = run_helper(project, [f"run_name={run}"], plan)
        assert result.returncode == status, result.stderr[-2000:]
        assert f"interrupted ({name})" in result.stderr
        assert "resume with: python train.py --config t" in result.stderr and "--resume" in result.stderr
        saved = bundle(project, run)["train_state"]
        assert saved["global_step"] == 9 and saved["step_in_epoch"] == 3  # mid-epoch, exactly where it stopped
        assert run_helper(project, [f"run_name={run}", "--resume"]).returncode == 0
        assert_same_run(project, "ref", run)


@pytest.mark.e2e
def test_second_signal_aborts_without_saving_and_handlers_are_restored(project, capsys):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    steps = {"n": 0}

    def two_signals_after_step_7(optimizer, args, kwargs):
        steps["n"] += 1
        if steps["n"] == 7:
            signal.raise_signal(signal.SIGTERM)  # finish the step and save, says the first...
            signal.raise_signal(signal.SIGTERM)  # ...the second: stop now, save nothing

    handle = register_optimizer_step_post_hook(two_signals_after_step_7)
    try:
        assert train.main(["--config", "t"]) == 143
    finally:
        handle.remove()
    assert {s: signal.getsignal(s) for s in before} == before
    assert bundle(project, "t")["train_state"]["global_step"] == 6  # the epoch-1 save; none at step 7
    assert "interrupted (SIGTERM): resumable checkpoint saved" not in capsys.readouterr().err
    # The same process trains again, and resumes from the last save.
    assert train.main(["--config", "t", "--resume"]) == 0
    assert bundle(project, "t")["train_state"]["global_step"] == 12


@pytest.mark.e2e
def test_corrupt_newest_checkpoint_is_skipped(project, capsys):
    assert train.main(["--config", "t", "checkpoint.keep_last=2", "training.epochs=1"]) == 0
    run = project / "saved_model" / "t"
    older = sorted((run / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in older] == ["step-00000005.pt"]
    (run / "last.pt").write_bytes(os.urandom(1000))
    assert train.main(["--config", "t", "checkpoint.keep_last=2", "training.epochs=1", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in out and "last.pt" in out
    assert bundle(project, "t")["train_state"]["global_step"] == 6


@pytest.mark.e2e
def test_retention_counts(project):
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=3",
                "checkpoint.every_n_steps=2",
                "checkpoint.keep_last=3",
                "checkpoint.keep_top_k=2",
            ]
        )
        == 0
    )
    run = project / "saved_model" / "t"
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-00000014.pt", "step-00000016.pt"]  # plus last.pt at step 18
    top = sorted(p.name for p in (run / "top").iterdir())
    assert len(top) == 2
    history = bundle(project, "t")["train_state"]["history"]
    best_two = sorted(history, key=lambda r: -r["pearson"])[:2]
    assert top == sorted(f"epoch-{r['epoch']:03d}" for r in best_two)
    # the bookkeeping survives a resume that trains further
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=4",
                "checkpoint.every_n_steps=2",
                "checkpoint.keep_last=3",
                "checkpoint.keep_top_k=2",
                "--resume",
            ]
        )
        == 0
    )
    assert len(list((run / "checkpoints").iterdir())) == 2 and len(list((run / "top").iterdir())) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("prefix", ["", "module."])
def test_seed_style_bundle_resumes(project, capsys, prefix, tiny_model_dir):
    """A bundle written by tutorial code: {model_state_dict, optimizer_state_dict, epoch, loss}."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # one real step, so the bundle carries moments (and a step count) to remap onto plaintune's groups
    model(input_ids=torch.tensor([[101, 2023, 102]])).logits.sum().backward()
    optimizer.step()
    path = project / "seed.pt"
    torch.save(
        {
            "model_state_dict": {prefix + k: v for k, v in model.state_dict().items()},
            "optimizer_state_dict": optimizer.state_dict(),
            "epoch": 1,
            "loss": 0.5,
        },
        path,
    )
    assert train.main(["--config", "t", "--resume", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: the checkpoint lacks parts of a plaintune bundle") == 1
    assert "scheduler (replayed)" in out and "RNG states" in out
    if prefix:
        assert "strip DDP 'module.'" in out
    saved = bundle(project, "t")
    assert saved["epoch"] == 2 and saved["train_state"]["global_step"] == 12  # one more epoch of 6 steps
    # the seed's moments were continued, not dropped: every parameter's AdamW count is 1 + 6 steps
    counts = {float(s["step"]) for s in saved["optimizer_state_dict"]["state"].values()}
    assert counts == {7.0}


@pytest.mark.e2e
def test_config_drift_refused_unless_forced(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    assert train.main(["--config", "t", "training.epochs=2", "training.batch_size=4", "seed=1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "training.batch_size" in err and "--force" in err
    assert train.main(["--config", "t", "training.epochs=2", "seed=1", "--resume", "--force"]) == 0
    assert "resuming despite changed seed" in capsys.readouterr().out


@pytest.mark.e2e
def test_allowed_changes_are_noted(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    assert train.main(["--config", "t", "training.epochs=2", "training.log_every_n_steps=3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "config changes since the checkpoint" in out and "training.epochs" in out


@pytest.mark.e2e
def test_resume_without_checkpoint(project, capsys):
    assert train.main(["--config", "t", "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.e2e
def test_full_disk_keeps_previous_checkpoint(project, capsys, monkeypatch):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    before = (project / "saved_model" / "t" / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write 'saved_model/t/last.pt': the disk is full" in err
    assert (project / "saved_model" / "t" / "last.pt").read_bytes() == before
    assert not list((project / "saved_model" / "t").glob(".*.tmp"))


@pytest.mark.e2e
def test_unwritable_run_directory(project, capsys, tiny_model_dir):
    (project / "saved_model").write_text("not a directory")
    assert train.main(["--config", "t", "training.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output_dir: 'saved_model' is not a folder") and "Traceback" not in err
    write_config(project, base_config(tiny_model_dir))


@pytest.mark.e2e
def test_a_finished_run_without_last_pt_is_never_replaced_silently(project, capsys):
    """checkpoint.keep_last_after_finish: false drops last.pt; the same command again must not train a
    new run over the finished one, and --resume says why it cannot continue."""
    assert train.main(["--config", "t", "training.epochs=1", "checkpoint.keep_last_after_finish=false"]) == 0
    run = project / "saved_model" / "t"
    assert not (run / "last.pt").exists() and (run / "best").is_dir()
    weights = (run / "best" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=1", "seed=7"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    assert "keep_last_after_finish" in capsys.readouterr().err
    assert (run / "best" / "model.safetensors").read_bytes() == weights
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0

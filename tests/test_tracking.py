"""Watching a run: wandb (offline, real library), TensorBoard, metrics.jsonl, the plot, early stopping."""

from __future__ import annotations

import json

import pytest
import torch

import train
from wandb_records import logged


def evals(project, run="t") -> list[dict]:
    lines = (project / "saved_model" / run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


@pytest.mark.e2e
def test_wandb_offline_logs_config_and_metrics_and_resumes_the_same_run(project, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: auto must mean offline
    args = ["--config", "t", "logging.wandb.mode=auto", "logging.wandb.tags=[demo]"]
    assert train.main([*args, "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "wandb sync saved_model/t/wandb/offline-run-" in out
    run_files = sorted((project / "saved_model" / "t" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    record = logged(run_files[0])
    assert json.loads(record["config"]["training"])["batch_size"] == 8
    assert json.loads(record["config"]["model"])["max_length"] == 48
    pearsons = [float(h["eval/pearson"]) for h in record["history"] if "eval/pearson" in h]
    assert pearsons == pytest.approx([evals(project)[0]["pearson"]])
    assert "train/loss" in {k for h in record["history"] for k in h}
    assert float(record["summary"]["best_pearson"]) == pytest.approx(pearsons[0])

    run_id = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["run_ids"]["wandb"]
    assert run_id in run_files[0].name
    assert train.main([*args, "training.epochs=2", "--resume"]) == 0
    resumed = sorted((project / "saved_model" / "t" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert all(run_id in p.name for p in resumed), "a resumed run must continue the same wandb run id"


def run_record(path):
    from wandb_records import read_records

    return next(r.run for r in read_records(path) if r.WhichOneof("record_type") == "run")


@pytest.mark.e2e
def test_wandb_follows_its_environment_variables(project, tmp_path, monkeypatch, capsys):
    """auto means WANDB_MODE; WANDB_PROJECT, WANDB_RUN_GROUP and WANDB_DIR apply unless the config sets them."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key alone would mean online: WANDB_MODE wins
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "group-env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    assert train.main(["--config", "t", "logging.wandb.mode=auto", "training.epochs=1"]) == 0
    assert not (project / "saved_model" / "t" / "wandb").exists()
    files = sorted((tmp_path / "elsewhere" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run = run_record(files[0])
    assert (run.project, run.run_group) == ("from-env", "group-env")

    # the config's own values win over the environment
    assert (
        train.main(
            [
                "--config",
                "t",
                "run_name=u",
                "logging.wandb.mode=auto",
                "training.epochs=1",
                "logging.wandb.project=from-config",
                "logging.wandb.group=group-config",
            ]
        )
        == 0
    )
    files = sorted((tmp_path / "elsewhere" / "wandb").glob("offline-run-*/run-*.wandb"))
    projects = {(run_record(f).project, run_record(f).run_group) for f in files}
    assert projects == {("from-env", "group-env"), ("from-config", "group-config")}


@pytest.mark.e2e
def test_wandb_mode_disabled_in_the_environment_writes_nothing(project, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    assert train.main(["--config", "t", "logging.wandb.mode=auto", "training.epochs=1"]) == 0
    assert not (tmp_path / "elsewhere").exists() and not (project / "saved_model" / "t" / "wandb").exists()
    assert "run_ids" in torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)


@pytest.mark.e2e
def test_invalid_wandb_mode_is_one_error_line(project, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    assert train.main(["--config", "t", "logging.wandb.mode=offline", "training.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: WANDB_MODE='bogus' is not a wandb mode")
    assert not (project / "saved_model").exists()


@pytest.mark.e2e
def test_a_backend_that_cannot_start_stops_the_run_before_anything_is_lost(project, monkeypatch, capsys):
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    before = {p: p.read_bytes() for p in (project / "saved_model" / "t").rglob("*") if p.is_file()}

    def refuse(**kwargs):
        raise RuntimeError("api.wandb.ai: connection refused\nretrying")

    monkeypatch.setattr(wandb, "init", refuse)
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=1", "logging.wandb.mode=online", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "logging.wandb: wandb could not start in online mode (api.wandb.ai: connection refused)" in err[0]
        and "logging.wandb.mode=offline" in err[0]
    )
    after = {p: p.read_bytes() for p in (project / "saved_model" / "t").rglob("*") if p.is_file()}
    assert after == before  # --overwrite did not get to clear the previous run


@pytest.mark.e2e
def test_tensorboard_events_hold_the_metric_each_epoch(project):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train.main(["--config", "t", "logging.tensorboard=true", "training.epochs=3"]) == 0
    accumulator = EventAccumulator(str(project / "saved_model" / "t" / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Scalars("eval/pearson")
    expected = evals(project)
    assert [s.step for s in scalars] == [r["step"] for r in expected] == [6, 12, 18]
    assert [s.value for s in scalars] == pytest.approx([r["pearson"] for r in expected], abs=1e-6)
    assert {"train/loss", "train/lr", "train/samples_per_s", "eval/loss"} <= set(accumulator.Tags()["scalars"])


@pytest.mark.e2e
def test_curves_png_is_a_valid_image(project):
    assert train.main(["--config", "t", "training.epochs=2"]) == 0
    data = (project / "saved_model" / "t" / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    image = imread(project / "saved_model" / "t" / "curves.png")
    assert image.shape[0] > 100 and image.shape[1] > 300


def spy_on_drawings(monkeypatch) -> list:
    """The validations each curves.png drawing shows (their steps), one list per drawing."""
    from plaintune.training import tracking

    drawings = []
    real = tracking.plot_curves

    def plot(records, path, metric):
        drawings.append([r["step"] for r in records if r["kind"] == "eval"])
        real(records, path, metric)

    monkeypatch.setattr(tracking, "plot_curves", plot)
    return drawings


@pytest.mark.e2e
def test_curves_are_redrawn_at_most_every_interval_and_complete_at_the_end(project, monkeypatch):
    """Validations seconds apart are drawn once, when the run finishes; far enough apart, each is drawn."""
    from plaintune.training import tracking

    drawings = spy_on_drawings(monkeypatch)
    assert train.main(["--config", "t", "training.epochs=2", "training.eval_every_n_steps=2"]) == 0
    assert drawings == [[2, 4, 6, 8, 10, 12]]
    drawings.clear()
    monkeypatch.setattr(tracking, "PLOT_MIN_INTERVAL_S", 0.0)
    assert train.main(["--config", "t", "training.epochs=2", "--overwrite"]) == 0
    assert drawings == [[6], [6, 12]]


@pytest.mark.e2e
def test_a_run_stopped_by_a_signal_draws_its_curves(project, monkeypatch):
    from conftest import signal_after_step

    drawings = spy_on_drawings(monkeypatch)
    with signal_after_step(8):
        assert train.main(["--config", "t", "training.epochs=2"]) == 143
    assert drawings == [[6]] and (project / "saved_model" / "t" / "curves.png").is_file()


@pytest.mark.e2e
def test_a_resumed_run_with_nothing_left_to_train_draws_what_its_last_process_did_not(project, monkeypatch):
    """A process that dies after its last validation, before its curves are drawn (a crash while
    scoring test_path, a kill): --resume has no epoch left, and still leaves curves.png complete."""
    from plaintune.training import tracking

    drawn = tracking.Tracker.flush
    monkeypatch.setattr(tracking.Tracker, "flush", lambda self: None)  # the first process never draws
    assert train.main(["--config", "t", "training.epochs=2"]) == 0
    run = project / "saved_model" / "t"
    assert not (run / "curves.png").exists()
    monkeypatch.setattr(tracking.Tracker, "flush", drawn)
    drawings = spy_on_drawings(monkeypatch)
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 0
    assert drawings == [[6, 12]] and (run / "curves.png").is_file()


@pytest.mark.e2e
def test_a_drawing_that_fails_after_a_signal_keeps_the_resume_command(project, monkeypatch, capsys):
    """The checkpoint is saved before the curves are drawn; a drawing that fails then is reported,
    and the user still learns how to resume."""
    from conftest import signal_after_step
    from plaintune.errors import UserError
    from plaintune.training import tracking

    def unwritable(records, path, metric):
        raise UserError(f"cannot write '{path}': permission denied; choose a writable directory")

    monkeypatch.setattr(tracking, "plot_curves", unwritable)
    with signal_after_step(8):
        assert train.main(["--config", "t", "training.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "resume with: python train.py --config t training.epochs=2 --resume" in err
    assert err.rstrip().splitlines()[-1].startswith("error: cannot write 'saved_model/t/curves.png'")
    assert (project / "saved_model" / "t" / "last.pt").is_file()


@pytest.mark.e2e
def test_metrics_jsonl_has_train_and_eval_lines(project):
    assert train.main(["--config", "t", "training.epochs=2"]) == 0
    lines = [json.loads(x) for x in (project / "saved_model" / "t" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [2, 4, 6, 8, 10, 12]  # log_every_n_steps=2
    assert all({"loss", "lr", "samples_per_s"} <= set(r) for r in train_lines)
    assert [r["epoch"] for r in evals(project)] == [1, 2]


@pytest.mark.e2e
def test_early_stopping_stops_at_the_expected_epoch(project, capsys):
    # A min_delta no real gain can reach: only the first validation counts as progress.
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=5",
                "training.early_stopping.patience=2",
                "training.early_stopping.min_delta=10",
            ]
        )
        == 0
    )
    assert [r["epoch"] for r in evals(project)] == [1, 2, 3]
    assert "early stopping" in capsys.readouterr().out
    state = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["train_state"]
    assert state["stopped_early"] and state["bad_validations"] == 2


@pytest.mark.e2e
def test_early_stopping_counter_survives_resume(project):
    stop = ["training.early_stopping.patience=3", "training.early_stopping.min_delta=10"]
    assert train.main(["--config", "t", "training.epochs=2", *stop]) == 0  # bad_validations = 1
    assert train.main(["--config", "t", "training.epochs=6", *stop, "--resume"]) == 0
    # with the counter restored: bad 2 after epoch 3, 3 after epoch 4 -> stop (a reset counter would reach 5)
    assert [r["epoch"] for r in evals(project)] == [1, 2, 3, 4]


@pytest.mark.e2e
def test_sweep_style_arguments(project):
    assert train.main(["--config", "t", "--training.epochs=1", "--training.learning_rate=5e-4"]) == 0
    saved = (project / "saved_model" / "t" / "config.yaml").read_text()
    assert "epochs: 1" in saved and "learning_rate: 0.0005" in saved


@pytest.mark.e2e
def test_sweep_spec_runs_train_py_with_unique_run_names(project):
    import yaml

    from conftest import REPO

    spec = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())
    assert spec["program"] == "train.py" and "${args}" in spec["command"]
    assert train.main(["--config", "t", "training.epochs=1", "run_name=sweep-{time}"]) == 0
    runs = [p.name for p in (project / "saved_model").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("sweep-2") and "{" not in runs[0]

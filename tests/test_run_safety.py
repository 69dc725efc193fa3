"""A run never destroys what it was not asked to change: one process per run, data that changed
under a resume, inputs inside the run's own outputs, train/dev overlap."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

import train
from conftest import REPO


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.e2e
def test_a_second_process_on_the_same_run_is_locked_out(project, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--config", "t", "training.epochs=400", "checkpoint.every_n_steps=0"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = project / "saved_model" / "t" / ".lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip()) and holder.poll() is None:
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        assert holder.poll() is None, holder.stderr.read()
        for args in (["--overwrite"], []):
            assert train.main(["--config", "t", "training.epochs=1", *args]) == 2
            line = error_line(capsys)
            assert f"is being trained right now by pid {holder.pid}" in line or "already has a checkpoint" in line
        assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 2
        assert f"pid {holder.pid}" in error_line(capsys)
        # a different run name is not affected by the lock
        assert train.main(["--config", "t", "training.epochs=1", "run_name=other"]) == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The holder died without releasing anything: its lock dies with it.
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0
    assert not (project / "saved_model" / "t" / ".lock").exists()


@pytest.mark.e2e
def test_resume_on_changed_data_is_refused_unless_forced(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    train_csv = project / "data" / "train.csv"
    lines = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join(lines[:41]) + "\n")  # 40 rows instead of 48
    last = project / "saved_model" / "t" / "last.pt"
    before = digest(last)
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    line = error_line(capsys)
    assert (
        "--resume: the data changed since the checkpoint: data.train_path 'data/train.csv' (contents changed, "
        "48 -> 40 rows)"
        in line
        and "--force" in line
    )
    assert digest(last) == before
    assert train.main(["--config", "t", "training.epochs=2", "--resume", "--force"]) == 0
    assert "warning: resuming on changed data (--force)" in capsys.readouterr().out


@pytest.mark.e2e
def test_an_edited_row_counts_as_changed_data(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    dev_csv = project / "data" / "dev.csv"
    dev_csv.write_text(dev_csv.read_text().replace(",5.0,", ",4.0,", 1))
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    assert "data.dev_path 'data/dev.csv' (contents changed)" in error_line(capsys)


@pytest.mark.e2e
def test_warm_start_source_inside_the_run_it_would_overwrite(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    best = project / "saved_model" / "t" / "best"
    before = {p.name: digest(p) for p in best.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite", "model.init_from=saved_model/t/best"]) == 2
    line = error_line(capsys)
    assert "run_name: 'saved_model/t/best' is the input model.init_from" in line
    assert {p.name: digest(p) for p in best.iterdir() if p.is_file()} == before
    # from another run name it is an ordinary warm start
    assert (
        train.main(["--config", "t", "training.epochs=1", "run_name=warm", "model.init_from=saved_model/t/best"]) == 0
    )


@pytest.mark.e2e
@pytest.mark.parametrize("copied", [1, 20])
def test_train_dev_overlap_is_reported_and_refused_above_the_threshold(project, capsys, copied):
    dev_rows = (project / "data" / "dev.csv").read_text().splitlines()[1:]
    with open(project / "data" / "train.csv", "a") as handle:
        handle.write("\n".join(dev_rows[:copied]) + "\n")  # dev rows copied into train, ids and all
    code = train.main(["--config", "t", "training.epochs=1", "data.max_overlap=0.05"])
    if copied == 1:  # 1 of 24 = 4.2%: under 5%, reported
        assert code == 0
        assert (
            "note: 1 of 24 dev pairs (4.2%) also appear in the training data; 1 dev ids are also train ids"
            in capsys.readouterr().out
        )
    else:
        assert code == 2
        assert "data.dev_path: 20 of 24 dev pairs (83.3%) also appear in data.train_path" in error_line(capsys)
        assert not (project / "saved_model").exists()


@pytest.mark.e2e
def test_runs_live_under_output_dir_from_any_working_directory(project, tmp_path_factory, monkeypatch, capsys):
    """output_dir elsewhere (a Drive folder): train, resume and predict by run name from another directory."""
    import yaml

    drive = tmp_path_factory.mktemp("drive") / "runs"
    cfg = yaml.safe_load((project / "configs" / "t.yaml").read_text())
    cfg["output_dir"] = str(drive)
    for key in ("train_path", "dev_path", "predict_path", "submission_template"):
        cfg["data"][key] = str(project / cfg["data"][key])
    cfg["inference"]["output_path"] = str(project / "output" / "sub.csv")
    config = project / "configs" / "drive.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert train.main(["--config", str(config), "training.epochs=1"]) == 0
    assert (drive / "t" / "best" / "config.json").is_file() and not (project / "saved_model").exists()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    assert train.main(["--config", str(config), "training.epochs=2", "--resume"]) == 0
    import inference

    assert inference.main(["--config", str(config), "--saved_model", "t"]) == 0
    assert (project / "output" / "sub.csv").is_file() and not (elsewhere / "saved_model").exists()


@pytest.mark.e2e
def test_a_config_inside_the_run_directory_is_never_rewritten(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    saved = project / "saved_model" / "t" / "config.yaml"
    before = digest(saved)
    capsys.readouterr()
    assert train.main(["--config", str(saved), "training.epochs=2", "--resume"]) == 2
    assert "is the input --config" in error_line(capsys)
    assert digest(saved) == before


@pytest.mark.e2e
def test_k_fold_resume_with_another_split_changes_nothing(project, capsys):
    args = ["--config", "t", "training.epochs=1", "run_name=kf", "--folds", "2"]
    assert train.main(args) == 0
    folder = project / "saved_model" / "kf-folds"
    before = {p.name: digest(p) for p in folder.iterdir()}
    capsys.readouterr()
    for extra, expected in (
        (["--resume", "seed=43"], "differs in seed 7 -> 43"),
        (["--resume", "--folds", "3"], "differs in folds 2 -> 3"),
        ([], "holds a k-fold already"),
    ):
        assert train.main([*args, *extra]) == 2
        assert expected in error_line(capsys)
        assert {p.name: digest(p) for p in folder.iterdir()} == before
    assert train.main([*args, "--resume"]) == 0  # the same k-fold resumes: nothing retrained
    assert "fold 2/2: done earlier" in capsys.readouterr().out


@pytest.mark.e2e
def test_empty_or_upper_case_wandb_mode_is_understood(project, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    for value in ("", "OFFLINE"):
        monkeypatch.setenv("WANDB_MODE", value)
        assert (
            train.main(["--config", "t", "training.epochs=1", f"run_name=wb{len(value)}", "logging.wandb.mode=offline"])
            == 0
        )


@pytest.mark.e2e
def test_a_tokenizer_that_cannot_read_the_data_is_named(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "run_name=english"]) == 0
    assert "warning: the tokenizer" not in capsys.readouterr().out
    korean = ["안전모를 쓴 한 남자가 춤을 추고 있다.", "어린아이가 말을 타고 있다.", "비행기가 이륙하고 있다."]
    rows = [f"k{i},s,{korean[i % 3]},{korean[(i + 1) % 3]},{i % 5}" for i in range(48)]
    (project / "data" / "train.csv").write_text("id,source,sentence_1,sentence_2,label\n" + "\n".join(rows) + "\n")
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "warning: the tokenizer of model.name" in out and "are single characters" in out
    assert "klue/roberta-small" in out  # the data is Korean: a Korean model is named


@pytest.mark.e2e
def test_k_fold_checks_the_users_overlap_first_and_prints_complete_commands(project, capsys):
    dev_rows = (project / "data" / "dev.csv").read_text().splitlines()[1:]
    original = (project / "data" / "train.csv").read_text()
    (project / "data" / "train.csv").write_text(original + "\n".join(dev_rows) + "\n")
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=1", "run_name=kf", "--folds", "2"]) == 2
    assert "data.train_path ('data/train.csv')" in error_line(capsys)
    assert not (project / "saved_model").exists()
    (project / "data" / "train.csv").write_text(original)
    assert (
        train.main(["--config", "t", "training.epochs=1", "run_name=kf", "--folds", "2", "checkpoint.keep_last=2"]) == 0
    )
    out = capsys.readouterr().out
    assert (
        "next: python inference.py --config t --saved_model kf-fold1 kf-fold2 training.epochs=1 run_name=kf "
        "checkpoint.keep_last=2" in out
    )


@pytest.mark.e2e
def test_overwrite_keeps_the_new_load_report(project):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    args = ["--config", "t", "training.epochs=1", "run_name=ws", "model.init_from=saved_model/t/best"]
    assert train.main(args) == 0
    assert train.main([*args, "--overwrite"]) == 0
    assert "loaded" in (project / "saved_model" / "ws" / "load_report.txt").read_text()


@pytest.mark.e2e
def test_overwrite_removes_only_what_plaintune_wrote_in_the_run_folders(project, capsys):
    """--overwrite starts the run over: plaintune's bundles, top models, report and event files go; a
    user's files put in those folders stay (best/ is a model directory plaintune replaces whole)."""
    common = [
        "--config",
        "t",
        "training.epochs=1",
        "checkpoint.keep_top_k=1",
        "checkpoint.keep_last=2",
        "checkpoint.every_n_steps=2",
        "logging.tensorboard=true",
    ]
    assert train.main(common) == 0
    run = project / "saved_model" / "t"
    theirs = {
        run / "checkpoints" / "notes.md": "mine",
        run / "top" / "keep_me.txt": "mine",
        run / "report" / "my_analysis.md": "mine",
        run / "tensorboard" / "mine.txt": "mine",
    }
    for folder in ("checkpoints", "top", "report", "tensorboard"):
        assert any((run / folder).iterdir()), f"{folder}/ should hold plaintune's files before the overwrite"
    for path, text in theirs.items():
        path.write_text(text)
    old_events = {p.name for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert train.main([*common, "training.max_steps=1", "checkpoint.keep_top_k=0", "--overwrite"]) == 0
    for path, text in theirs.items():
        assert path.read_text() == text, f"{path} was the user's"
    assert not any((run / "checkpoints").glob("step-*.pt")) and not any((run / "top").glob("epoch-*"))
    assert not old_events & {p.name for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert {p.name for p in (run / "report").iterdir()} >= {"my_analysis.md"}


@pytest.mark.e2e
def test_a_lock_file_of_another_tool_is_never_taken_over(project, capsys):
    folder = project / "saved_model" / "L"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("other tool lock\n")
    assert train.main(["--config", "t", "run_name=L", "training.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "is not plaintune's lock file" in err and len(err.strip().splitlines()) == 1
    assert (
        sorted(p.name for p in folder.iterdir()) == [".lock"] and (folder / ".lock").read_text() == "other tool lock\n"
    )


@pytest.mark.e2e
def test_the_api_refuses_resume_and_overwrite_together(project):
    import plaintune

    assert train.main(["--config", "t", "training.max_steps=2"]) == 0
    with pytest.raises(plaintune.UserError, match="resume continues a run and overwrite starts it over"):
        plaintune.train("t", "training.max_steps=3", resume=True, overwrite=True)

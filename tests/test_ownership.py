"""A run directory is plaintune's own (ownership.py): foreign folders are refused, with or without
--overwrite (so is a run of an earlier plaintune without the marker); temporaries are cleaned only by
plaintune's names in its folders; of two runs started at the same instant on one run_name, the one
that loses the lock writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import train
from conftest import REPO, base_config, write_config
from plaintune.data.checks import pair_key
from plaintune.errors import UserError
from plaintune.kfold import folds
from plaintune.rundir import ownership


def tree(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def user_folder(root: Path) -> Path:
    """A folder of the user's: their own config.yaml, checkpoints/, data/ with a temp-looking file."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "mine.pt").write_bytes(b"the user's own model")
    (root / "config.yaml").write_text("run_name: something_else\nnotes: mine\n")
    (root / "data").mkdir()
    (root / "data" / ".notes.abcdefgh.tmp").write_text("looks like a temporary, is not plaintune's")
    (root / "last.pt").write_bytes(b"not a plaintune bundle, only its name")
    return root


@pytest.mark.e2e
@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"], ["--overwrite", "--force"]])
def test_a_folder_plaintune_did_not_make_is_refused_and_untouched(project, capsys, flags):
    folder = user_folder(project / "saved_model" / "mine")
    before = tree(folder)
    assert train.main(["--config", "t", "run_name=mine", "training.epochs=1", *flags]) == 2
    line = error_line(capsys)
    assert "run_name: 'saved_model/mine' exists and was not made by plaintune" in line
    assert tree(folder) == before and not (folder / ".lock").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml", "data", "last.pt"]


@pytest.mark.e2e
def test_the_project_folder_itself_as_a_run_directory(project, capsys):
    before = tree(project)
    for flags in ([], ["--overwrite"]):
        assert train.main(["--config", "t", "output_dir=..", f"run_name={project.name}", *flags]) == 2
        assert "was not made by plaintune" in error_line(capsys)
    assert tree(project) == before


@pytest.mark.e2e
def test_kfold_and_leaderboard_folders_are_checked_too(project, capsys):
    user_folder(project / "saved_model" / "t-folds")
    assert train.main(["--config", "t", "--folds", "2"]) == 2
    assert "run_name: 'saved_model/t-folds' exists and was not made by plaintune" in error_line(capsys)
    user_folder(project / "saved_model" / "lb")
    assert train.main(["--config", "t", "run_name=lb", "ensemble.members={a: [], b: []}"]) == 2
    assert "'saved_model/lb' exists and was not made by plaintune" in error_line(capsys)


@pytest.mark.e2e
@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_user_folder_named_like_a_later_fold_stops_the_k_fold_before_any_fold_trains(project, capsys, flags):
    """Every fold's run directory is checked up front: a user's w-fold2 refuses the k-fold before
    w-fold1 trains (and before the k-fold's own folder is made)."""
    notes = project / "saved_model" / "w-fold2" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("the user's own notes")
    assert train.main(["--config", "t", "run_name=w", "training.epochs=1", "--folds", "2", *flags]) == 2
    assert "run_name: 'saved_model/w-fold2' exists and was not made by plaintune" in error_line(capsys)
    assert sorted(p.name for p in (project / "saved_model").iterdir()) == ["w-fold2"]  # no w-fold1, no w-folds
    assert [p.name for p in notes.parent.iterdir()] == ["notes.txt"] and notes.read_text() == "the user's own notes"


@pytest.mark.e2e
@pytest.mark.parametrize("folder", ["lb-b-fold1", "lb-b-folds", "lb-a-fold2"])
def test_a_user_folder_named_like_any_member_fold_stops_the_leaderboard_before_it_trains(project, capsys, folder):
    """Every member's k-fold folder and fold runs are checked before the first member's first fold
    trains (here the second member's, or the first member's last fold)."""
    notes = project / "saved_model" / folder / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("the user's own notes")
    assert (
        train.main(
            ["--config", "t", "run_name=lb", "training.epochs=1", "ensemble.folds=2", "ensemble.members={a: [], b: []}"]
        )
        == 2
    )
    assert f"run_name: 'saved_model/{folder}' exists and was not made by plaintune" in error_line(capsys)
    assert sorted(p.name for p in (project / "saved_model").iterdir()) == [folder]  # not even lb/
    assert [p.name for p in notes.parent.iterdir()] == ["notes.txt"] and notes.read_text() == "the user's own notes"


@pytest.mark.e2e
def test_a_marked_run_is_cleared_by_overwrite_and_an_empty_folder_is_taken(project, capsys):
    (project / "saved_model" / "t").mkdir(parents=True)  # made by the user in advance, still empty
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    run = project / "saved_model" / "t"
    assert json.loads((run / ownership.MARKER).read_text())["kind"] == "run"
    (run / "best" / "extra.txt").write_text("x")
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0
    assert not (run / "best" / "extra.txt").exists()  # best/ was replaced: the run was plaintune's
    # a single run never takes over a k-fold's folder (nor the other way round)
    folder = project / "saved_model" / "x-folds"
    folder.mkdir()
    ownership.write_marker(folder, ownership.FOLDS)
    capsys.readouterr()
    assert train.main(["--config", "t", "run_name=x-folds"]) == 2
    assert "is a k-fold's folder" in error_line(capsys)


@pytest.mark.e2e
def test_a_run_without_the_marker_is_refused_even_if_plaintune_wrote_it(project, capsys):
    """0.x keeps no compatibility with earlier layouts: a trained run whose marker is gone (as a plaintune
    before the marker left it) is refused like any foreign folder, with one line, and left as it was."""
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    run = project / "saved_model" / "t"
    (run / ownership.MARKER).unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    for argv in (["--resume"], ["--overwrite"], []):
        assert train.main(["--config", "t", "training.epochs=2", *argv]) == 2
        assert "was not made by plaintune" in error_line(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_only_plaintunes_own_temporaries_are_cleaned(project):
    run = project / "saved_model" / "t"
    run.mkdir(parents=True)
    ownership.write_marker(run, ownership.RUN)
    ours = [run / ".last.pt.a1b2c3d4.tmp", run / ".config.yaml.zz_9yx8w.tmp", run / "top" / ".epoch-2.k3j4h5g6.tmp"]
    theirs = [run / ".notes.abcdefgh.tmp", run / "data" / ".last.pt.a1b2c3d4.tmp", run / "mine" / ".best.q1w2e3r4.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    removed = ownership.claim(run, ownership.RUN)
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


@pytest.mark.e2e
def test_output_dir_problems_name_output_dir(project, capsys, monkeypatch):
    (project / "afile").write_text("x")
    for value in ("afile", "afile/below"):
        assert train.main(["--config", "t", f"output_dir={value}"]) == 2
        line = error_line(capsys)
        assert line.startswith(f"error: output_dir: '{value}'") and "run_name" not in line.split(";")[0]
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if Path(path).name == "locked" else real_access(path, mode, **kw)
    )
    (project / "locked").mkdir()
    with pytest.raises(UserError, match=r"output_dir: cannot write in 'locked'"):
        ownership.check_owned(Path("locked") / "t", ownership.RUN)
    assert not (project / "locked" / "t").exists()


# ---------------------------------------------------------------- simultaneous starts

ROUNDS = 3


def race(project: Path, mode: str) -> list[tuple[dict, dict]]:
    """Two driver processes on the same run names, released together each round; per round the
    (winner, loser) results."""
    (project / "barrier").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent / "race_driver.py"),
                str(project),
                mode,
                seed,
                str(ROUNDS),
                str(project / f"{mode}-{seed}.json"),
            ],
            env=env,
        )
        for seed in ("11", "22")
    ]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    a, b = (json.loads((project / f"{mode}-{seed}.json").read_text()) for seed in ("11", "22"))
    rounds = []
    for first, second in zip(a, b):
        codes = sorted([str(first["code"]), str(second["code"])])
        assert codes == ["2", "stopped"], (first, second)
        winner, loser = (first, second) if first["code"] == "stopped" else (second, first)
        assert "is being trained right now by" in loser["stderr"], loser["stderr"]  # pid, or "another process"
        assert "already" not in loser["stderr"]
        rounds.append((winner, loser))
    return rounds


@pytest.mark.e2e
def test_two_single_runs_started_together(project):
    for number, _ in enumerate(race(project, "single")):
        run = project / "saved_model" / f"single{number}"
        files = sorted(p.name for p in run.iterdir())
        assert files == [ownership.MARKER, "config.yaml"], files  # the winner's first write, nothing of the loser


@pytest.mark.e2e
def test_two_kfolds_started_together_keep_the_winners_folds(project):
    pooled = pd.concat([pd.read_csv(project / "data" / "train.csv"), pd.read_csv(project / "data" / "dev.csv")])
    keys = [pair_key(a, b) for a, b in zip(pooled["sentence_1"], pooled["sentence_2"])]
    for number, (winner, _) in enumerate(race(project, "kfold")):
        folder = project / "saved_model" / f"kfold{number}-folds"
        assert json.loads((folder / "split.json").read_text())["seed"] == winner["seed"]
        parts = folds.split_folds(len(pooled), 2, winner["seed"], keys)
        for fold, held_out in enumerate(parts, start=1):  # every fold file is the winner's cut
            dev = pd.read_csv(folder / f"fold{fold}_dev.csv")
            assert list(dev["id"]) == list(pooled["id"].iloc[held_out])
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [ownership.MARKER, "split.json", "fold1_train.csv", "fold1_dev.csv", "fold2_train.csv", "fold2_dev.csv"]
        )


@pytest.mark.e2e
def test_two_leaderboards_started_together(project, tiny_model_dir):
    cfg = base_config(tiny_model_dir)
    cfg["ensemble"] = {"members": {"a": [], "b": ["training.learning_rate=1e-4"]}, "folds": 2}
    write_config(project, cfg, "lb")
    for number, _ in enumerate(race(project, "leaderboard")):
        folder = project / "saved_model" / f"leaderboard{number}"
        assert sorted(p.name for p in folder.iterdir()) == [ownership.MARKER]


@pytest.mark.e2e
def test_another_trainers_folder_or_a_copied_config_is_refused(project, capsys):
    """An HF Trainer checkpoint folder (trainer_state.json) and a user's copy of a shipped config named
    after the run are the user's: refused, nothing deleted, with or without --overwrite."""
    hf = project / "saved_model" / "hf"
    (hf / "best").mkdir(parents=True)
    (hf / "best" / "config.json").write_text('{"model_type": "bert"}')
    (hf / "best" / "trainer_state.json").write_text('{"epoch": 3, "global_step": 900}')
    (hf / "best" / "pytorch_model.bin").write_bytes(b"weights")
    (hf / "report").mkdir()
    (hf / "report" / "thesis.docx").write_bytes(b"years of work")
    copied = project / "saved_model" / "t"
    copied.mkdir()
    (copied / "config.yaml").write_text((project / "configs" / "t.yaml").read_text())
    before = {p: p.read_bytes() for folder in (hf, copied) for p in folder.rglob("*") if p.is_file()}
    for argv in (["run_name=hf", "--overwrite"], ["run_name=hf"], [], ["--overwrite"]):
        assert train.main(["--config", "t", "training.epochs=1", *argv]) == 2
        assert "was not made by plaintune" in error_line(capsys)
    assert {p: p.read_bytes() for folder in (hf, copied) for p in folder.rglob("*") if p.is_file()} == before

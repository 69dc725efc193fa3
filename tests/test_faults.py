"""Writes that fail (a full disk, an I/O error) and writes that were interrupted: one error line
naming the file, the previous version intact, no temporaries left behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import train
from plaintune.errors import UserError
from plaintune.rundir import atomic
from plaintune.rundir.layout import RunFiles


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def full_disk(monkeypatch, free: int = 0) -> None:
    """Make the file system report `free` bytes left, as after a write that ran out of space."""
    real = shutil.disk_usage

    def usage(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, free)

    monkeypatch.setattr(atomic.shutil, "disk_usage", usage)


# ---------------------------------------------------------------- atomic writes


def torch_stream_error(tmp: Path) -> None:
    """What torch.save raises when the disk fills up mid-write: no errno, no 'space' in it."""
    tmp.write_bytes(b"partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def test_torch_save_on_a_full_disk_is_a_user_error(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")
    full_disk(monkeypatch)
    with pytest.raises(UserError) as caught:
        atomic.write_with(target, torch_stream_error)
    assert str(caught.value) == (
        f"cannot write '{target}': the disk is full; free space or choose another "
        "directory (the previous file, if any, is intact)"
    )
    assert target.read_bytes() == b"previous" and not temporaries(tmp_path)


def test_safetensors_out_of_space_is_recognised_by_its_text(tmp_path):
    from safetensors import SafetensorError

    def writer(tmp: Path) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(UserError, match="the disk is full"):
        atomic.write_with(tmp_path / "model.safetensors", writer)
    assert not temporaries(tmp_path)


def test_other_write_failures_name_the_cause(tmp_path):
    def io_error(tmp: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(UserError, match=r"cannot write '.*x.csv': Input/output error \(the previous file"):
        atomic.write_with(tmp_path / "x.csv", io_error)

    def stream_error(tmp: Path) -> None:  # torch's writer failing for another reason, with space to spare
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(UserError, match=r"the write failed \(PytorchStreamWriter failed writing file data/0"):
        atomic.write_with(tmp_path / "last.pt", stream_error)
    assert not temporaries(tmp_path)


def test_a_bug_in_a_writer_is_not_disguised_as_a_user_error(tmp_path):
    def buggy(tmp: Path) -> None:
        tmp.write_bytes(b"x")
        raise TypeError("cannot pickle '_thread.lock' object")

    with pytest.raises(TypeError):
        atomic.write_with(tmp_path / "last.pt", buggy)
    assert not temporaries(tmp_path) and not (tmp_path / "last.pt").exists()


def test_replace_dir_failure_keeps_the_old_directory(tmp_path, monkeypatch):
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.safetensors").write_bytes(b"old weights")

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        torch_stream_error(tmp / "model.safetensors")

    full_disk(monkeypatch)
    with pytest.raises(UserError, match=f"cannot write '{best}': the disk is full"):
        atomic.replace_dir(best, fill)
    assert (best / "model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


# ---------------------------------------------------------------- saver


def bundle_at(step: int) -> dict:
    return {"model_state_dict": {"w": torch.full((4,), float(step))}, "train_state": {"global_step": step}}


@pytest.mark.parametrize("keep_last", [1, 3])
def test_failed_save_keeps_last_pt_in_place(tmp_path, monkeypatch, keep_last):
    """With keep_last > 1 the previous last.pt used to be moved to checkpoints/ before the new one
    was written: a failed write then left no last.pt at all."""
    saver = RunFiles(tmp_path, keep_last=keep_last)
    saver.save_last(bundle_at(5), previous_step=None)
    before = saver.last_path.read_bytes()
    real_save = torch.save

    def out_of_space(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", out_of_space)
    with pytest.raises(UserError, match="last.pt': the disk is full"):
        saver.save_last(bundle_at(10), previous_step=5)
    assert saver.last_path.read_bytes() == before
    assert saver.step_bundles() == [] and not temporaries(tmp_path)

    monkeypatch.undo()
    saver.save_last(bundle_at(10), previous_step=5)
    assert torch.load(saver.last_path, weights_only=True)["train_state"]["global_step"] == 10
    if keep_last > 1:  # rotated only once the new bundle was complete
        assert [(s, p.read_bytes()) for s, p in saver.step_bundles()] == [(5, before)]


def test_stale_temporaries_are_removed_anywhere_in_the_run(tmp_path):
    run = tmp_path / "run"
    stale = [
        run / ".last.pt.a1b2c3d4.tmp",
        run / "checkpoints" / ".step-00000005.pt.zz_9yx8w.tmp",
        run / "top" / ".epoch-002.k3j4h5g6.tmp",
        run / ".best.q1w2e3r4.tmp",
        run / "best" / ".x.json.abcdefgh.tmp",
    ]
    for path in stale:
        if path.name.startswith((".epoch", ".best")):
            path.mkdir(parents=True)
            (path / "model.safetensors").write_bytes(b"half")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
    kept = [
        run / "last.pt",
        run / "best" / "model.safetensors",
        run / "top" / "epoch-001" / "config.json",
        run / "notes.tmp",
        run / ".hidden",
        run / "tensorboard" / "events.out.tfevents.1.host",
    ]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep")
    removed = RunFiles(run).remove_stale_temporaries()
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.read_bytes() == b"keep" for p in kept)
    assert RunFiles(tmp_path / "no_run_yet").remove_stale_temporaries() == []


# ---------------------------------------------------------------- a real full disk


def mount_tmpfs(folder: Path, size: int) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.mark.e2e
def test_training_on_a_disk_that_fills_up(project, capsys):
    """saved_model/ on a tmpfs that holds the step-5 last.pt and best/, but not the epoch-end last.pt
    next to them: one error line naming it, the step-5 bundle intact, and the run resumes once
    there is space."""
    run = ["--config", "t", "training.epochs=1", "checkpoint.every_n_steps=5"]  # 6 steps: saves at 5 and 6
    assert train.main(run + ["run_name=probe"]) == 0
    probe = project / "saved_model" / "probe"
    last_size = (probe / "last.pt").stat().st_size
    best_size = sum(p.stat().st_size for p in (probe / "best").rglob("*") if p.is_file())
    shutil.rmtree(project / "saved_model")
    capsys.readouterr()

    saved = project / "saved_model"
    mount_tmpfs(saved, last_size + best_size + last_size // 2)
    try:
        assert train.main(run) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: cannot write 'saved_model/t/last.pt': the disk is full; free space or choose "
            "another directory (the previous file, if any, is intact)"
        ], err
        assert "Traceback" not in err
        bundle = torch.load(saved / "t" / "last.pt", weights_only=True)
        assert bundle["train_state"]["global_step"] == 5
        assert (saved / "t" / "best" / "model.safetensors").is_file() and not temporaries(saved)

        subprocess.run(["mount", "-o", f"remount,size={4 * (last_size + best_size) // 1024}k", str(saved)], check=True)
        assert train.main(run + ["--resume"]) == 0
        assert torch.load(saved / "t" / "last.pt", weights_only=True)["train_state"]["global_step"] == 6
    finally:
        if subprocess.run(["umount", str(saved)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(saved)], capture_output=True)

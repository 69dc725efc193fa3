"""What a finished run prints and keeps: disk (checkpoint.keep_last_after_finish), quiet k-fold lines, the plot hint."""

from __future__ import annotations

import pytest

import inference
import train


@pytest.mark.e2e
def test_a_finished_run_can_drop_its_resume_bundles(project, capsys):
    run = project / "saved_model" / "t"
    assert train.main(["--config", "t", "training.epochs=1", "checkpoint.keep_last=2"]) == 0
    out = capsys.readouterr().out
    assert (run / "last.pt").is_file() and "on disk:" in out and "last.pt" in out  # the default keeps it
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=2",
                "checkpoint.keep_last=2",
                "checkpoint.keep_last_after_finish=false",
                "--overwrite",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert not (run / "last.pt").exists() and not (run / "checkpoints").exists()
    assert (run / "best" / "model.safetensors").is_file()
    assert "resume file: deleted" in out
    line = next(line for line in out.splitlines() if "on disk:" in line)
    assert "best" in line and "last.pt" not in line
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0  # best/ is all inference needs


@pytest.mark.e2e
def test_a_kfold_prints_one_line_per_fold_and_one_next(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("next:") == 1 and out.count("done in") == 2
    done = [line for line in out.splitlines() if "done in" in line]
    assert all(line.startswith(("t-fold1: ", "t-fold2: ")) and "on disk:" in line for line in done)
    assert "best model:" not in out and "resume file:" not in out


def test_a_one_validation_plot_says_how_to_get_a_curve():
    from plaintune.training.tracking import curves_hint

    one = [{"kind": "train", "step": 1}, {"kind": "eval", "step": 2}]
    assert "training.eval_every_n_steps" in curves_hint(one)
    assert curves_hint([*one, {"kind": "eval", "step": 4}]) is None

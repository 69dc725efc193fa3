"""The error report: written after training for the best model on dev, and by inference for a labelled
predict file; its tables agree with a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import inference
import train
from plaintune.recipe.metrics import compute_metrics


def check_report(folder, frame: pd.DataFrame, predictions: np.ndarray) -> None:
    """The report in `folder` against `frame` (the labelled CSV) and the model's `predictions`."""
    labels = frame["label"].to_numpy(dtype=np.float64)
    summary = json.loads((folder / "summary.json").read_text())
    direct = compute_metrics(predictions, labels, 1, frame["binary-label"].to_numpy(), 3.0)
    assert summary["pearson"] == pytest.approx(direct["pearson"], abs=1e-6)
    assert summary["spread_ratio"] == pytest.approx(predictions.std() / labels.std(), rel=1e-6)
    by_source = pd.read_csv(folder / "by_source.csv")
    assert sorted(by_source["source"]) == sorted(frame["source"].unique())
    assert by_source["pairs"].sum() == len(frame)
    for row in by_source.itertuples():
        mask = (frame["source"] == row.source).to_numpy()
        expected = compute_metrics(predictions[mask], labels[mask], 1)
        assert row.pairs == mask.sum()
        for name in ("pearson", "spearman"):
            assert (np.isnan(expected[name]) and np.isnan(getattr(row, name))) or getattr(row, name) == pytest.approx(
                expected[name], abs=1e-6
            )
        assert row.mean_abs_error == pytest.approx(np.abs(predictions[mask] - labels[mask]).mean(), abs=1e-6)
    worst = pd.read_csv(folder / "worst_pairs.csv")
    errors = np.abs(predictions - labels)
    assert len(worst) == min(20, len(frame))
    assert worst["error"].abs().tolist() == pytest.approx(sorted(errors, reverse=True)[: len(worst)], abs=1e-5)
    first = worst.iloc[0]
    row = frame[frame["id"] == first["id"]].iloc[0]
    assert (first["sentence_1"], first["sentence_2"]) == (row["sentence_1"], row["sentence_2"])
    assert (folder / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def dev_predictions_by_inference(project, capsys) -> np.ndarray:
    """best/'s predictions on the labelled dev file, as inference.py writes them (unrounded)."""
    dev = pd.read_csv(project / "data" / "dev.csv")
    dev[["id"]].assign(target=0.0).to_csv(project / "data" / "dev_template.csv", index=False)
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                "t",
                "data.predict_path=data/dev.csv",
                "data.submission_template=data/dev_template.csv",
                "inference.round=null",
                "inference.clip=null",
                "inference.output_path=output/dev.csv",
            ]
        )
        == 0
    )
    assert "error report: output/dev_report/" in capsys.readouterr().out
    return pd.read_csv(project / "output" / "dev.csv")["target"].to_numpy(dtype=np.float64)


def spy_on_best_loads(monkeypatch) -> list:
    """The checkpoints the end-of-training report loads back (none when it reuses the validation's predictions)."""
    from plaintune.training import run

    loads = []
    real = run.load_weights
    monkeypatch.setattr(
        run, "load_weights", lambda model, source, *a, **k: loads.append(source) or real(model, source, *a, **k)
    )
    return loads


@pytest.mark.e2e
def test_report_of_a_best_saved_before_a_resume_is_predicted_from_best(project, capsys, monkeypatch):
    """A resumed run whose validations never beat the best of an earlier process: the report is best/'s,
    predicted from the checkpoint on disk, not from the last weights in memory."""
    from plaintune.training import selection

    loads = spy_on_best_loads(monkeypatch)
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    assert loads == []  # the run's own best validation already predicted dev with best/'s weights
    with monkeypatch.context() as patch:
        patch.setattr(selection, "is_better", lambda *args: False)  # no later validation is best
        assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 0
    assert [path.name for path in loads] == ["best"]
    capsys.readouterr()
    dev = pd.read_csv(project / "data" / "dev.csv")
    check_report(project / "saved_model" / "t" / "report", dev, dev_predictions_by_inference(project, capsys))


@pytest.mark.e2e
def test_an_ema_runs_validation_and_report_are_best_s_own(project, capsys):
    """training.ema: the dev metric that chose best/ (its meta) and the report are what best/ itself gives on
    dev (inference.py), mid-epoch validations included. The average once ran integer buffers (BERT's
    position_ids) through the EMA too, 3 -> int(2.9999) = 2: validation scored a model unlike the one saved."""
    assert train.main(["--config", "t", "training.ema=0.9", "training.eval_every_n_steps=2"]) == 0
    capsys.readouterr()
    dev = pd.read_csv(project / "data" / "dev.csv")
    predictions = dev_predictions_by_inference(project, capsys)
    check_report(project / "saved_model" / "t" / "report", dev, predictions)
    meta = json.loads((project / "saved_model" / "t" / "best" / "plaintune_state.json").read_text())
    direct = compute_metrics(predictions, dev["label"].to_numpy(dtype=np.float64), 1)
    assert meta["value"] == pytest.approx(direct["pearson"], abs=1e-5)


@pytest.mark.e2e
def test_report_after_training_and_at_inference(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "error report: " in out and "spread" in out
    dev = pd.read_csv(project / "data" / "dev.csv")
    # inference on the (labelled) dev file reproduces the predictions the training report used
    predictions = dev_predictions_by_inference(project, capsys)
    check_report(project / "output" / "dev_report", dev, predictions)
    check_report(project / "saved_model" / "t" / "report", dev, predictions)


@pytest.mark.e2e
def test_unlabelled_predict_file_writes_no_report(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    capsys.readouterr()
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0
    assert "error report" not in capsys.readouterr().out
    assert not (project / "output" / "sub_report").exists()
    # a folder of the report's name holding a user's files is not in the way when no report is written
    (project / "output" / "sub_report").mkdir()
    (project / "output" / "sub_report" / "notes.txt").write_text("mine")
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0
    assert [p.name for p in (project / "output" / "sub_report").iterdir()] == ["notes.txt"]


@pytest.mark.e2e
def test_inference_replaces_only_its_own_report_folder(project, capsys):
    """<stem>_report/ beside the submission: an earlier plaintune report is replaced; a folder holding a
    user's files (or a summary.json plaintune did not write) is refused before any work, its files intact."""
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    dev = pd.read_csv(project / "data" / "dev.csv")
    dev[["id"]].assign(target=0.0).to_csv(project / "data" / "dev_template.csv", index=False)
    args = [
        "--config",
        "t",
        "--saved_model",
        "t",
        "data.predict_path=data/dev.csv",
        "data.submission_template=data/dev_template.csv",
        "inference.output_path=output/dev.csv",
    ]
    report = project / "output" / "dev_report"
    assert inference.main(args) == 0
    assert json.loads((report / "summary.json").read_text())["written_by"] == "plaintune error report"
    assert inference.main(args) == 0  # its own report: replaced
    capsys.readouterr()
    for name, content in (("notes.txt", "mine"), ("summary.json", '{"mine": 1}')):
        user = project / "output" / f"u_{name}_report"
        user.mkdir()
        (user / name).write_text(content)
        written = project / "output" / f"u_{name}.csv"
        assert inference.main([*args, f"inference.output_path={written}"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "did not write" in err and "Traceback" not in err, err
        assert (user / name).read_text() == content and sorted(p.name for p in user.iterdir()) == [name]
        assert not written.exists()
    (report / "notes.txt").write_text("mine")  # a user's file put into plaintune's report folder
    assert inference.main(args) == 2
    assert (report / "notes.txt").read_text() == "mine"


def test_report_folder_check_ignores_desktop_files_and_refuses_what_it_cannot_write(tmp_path):
    """What a desktop drops into a viewed report (.DS_Store) does not make it a user's; a report file name
    taken by a folder, or a broken link where the folder goes, is refused before any work (not a traceback
    after the submission is written)."""
    from plaintune.errors import UserError
    from plaintune.inference.report import REPORT_WRITER, check_report_folder

    def refused(folder):
        try:
            check_report_folder(folder, "inference.output_path", standalone=True)
        except UserError as err:
            return str(err)
        return None

    viewed = tmp_path / "viewed_report"
    viewed.mkdir()
    (viewed / "summary.json").write_text(json.dumps({"written_by": REPORT_WRITER}))
    for name in (".DS_Store", "._scatter.png", "Thumbs.db"):
        (viewed / name).write_bytes(b"x")
    (viewed / ".ipynb_checkpoints").mkdir()
    assert refused(viewed) is None
    (viewed / "scatter.png").mkdir()  # a folder where the plot goes
    (viewed / "scatter.png" / "mine.txt").write_text("mine")
    assert "scatter.png" in refused(viewed)
    broken = tmp_path / "broken_report"
    broken.symlink_to(tmp_path / "nowhere")
    assert "does not exist" in refused(broken)

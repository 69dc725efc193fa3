"""The user's own files: data.dir, the shipped configs reading data/, and the files a run announces."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

import inference
import train
from conftest import REPO
from plaintune.config.load import load_config
from plaintune.errors import UserError


def test_shipped_offline_configs_read_the_users_data_folder(project):
    """default, cross_encoder and leaderboard run offline on the competition files in data/."""
    for name in ("default", "cross_encoder", "leaderboard"):
        cfg = load_config(str(REPO / "configs" / f"{name}.yaml"), purpose="train")
        assert (cfg.data.train_path, cfg.data.dev_path, cfg.data.predict_path) == (
            "data/train.csv",
            "data/dev.csv",
            "data/test.csv",
        ), name
        demo = load_config(
            str(REPO / "configs" / f"{name}.yaml"), [f"data.dir={REPO / 'data' / 'demo'}"], purpose="inference"
        )
        assert demo.data.submission_template == str(REPO / "data" / "demo" / "sample_submission.csv")


def test_missing_own_files_name_the_demo_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_config(str(REPO / "configs" / "default.yaml"), purpose="train")
    assert "data/train.csv" in str(err.value) and "data.dir=data/demo" in str(err.value)


def _own_files(folder, rows: dict) -> None:
    folder.mkdir(parents=True)
    for name, count in rows.items():
        frame = pd.read_csv(f"data/{name}")
        frame.head(count).to_csv(folder / name, index=False)


@pytest.mark.e2e
def test_data_dir_trains_on_those_files_and_says_so(project, capsys):
    _own_files(project / "mine", {"train.csv": 30, "dev.csv": 12, "test.csv": 20, "sample_submission.csv": 20})
    # the shipped-config style: bare file names under data.dir
    overrides = [
        "data.dir=mine",
        "data.train_path=train.csv",
        "data.dev_path=dev.csv",
        "data.predict_path=test.csv",
        "data.submission_template=sample_submission.csv",
        "training.epochs=1",
    ]
    assert train.main(["--config", "t", *overrides]) == 0
    out = capsys.readouterr().out
    for role, path, rows in (
        ("train", "mine/train.csv", 30),
        ("dev", "mine/dev.csv", 12),
        ("predict", "mine/test.csv", 20),
    ):
        line = next(line for line in out.splitlines() if line.startswith(f"data: {role} "))
        assert path in line and f"({rows} rows)" in line
    saved = yaml.safe_load((project / "saved_model" / "t" / "config.yaml").read_text())
    assert saved["data"]["dir"] is None and saved["data"]["train_path"] == "mine/train.csv"
    # inference with the same overrides reads the same folder; the saved config, read again, too
    shutil.rmtree(project / "data")
    assert inference.main(["--config", "t", "--saved_model", "t", *overrides]) == 0
    assert len(pd.read_csv(project / "output" / "sub.csv")) == 20
    again = load_config(str(project / "saved_model" / "t" / "config.yaml"), purpose="train")
    assert again.data.train_path == "mine/train.csv"


def test_absolute_paths_ignore_data_dir(project):
    absolute = str(project / "data" / "train.csv")
    cfg = load_config("t", ["data.dir=elsewhere", f"data.train_path={absolute}", "data.dev_path=dev.csv"])
    assert cfg.data.train_path == absolute and cfg.data.dev_path == "elsewhere/dev.csv"

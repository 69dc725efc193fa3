"""A user's files stay theirs, a resume continues the run as it was started, and the messages say what
is true: a submission never silently replaces a file, two runs of one config write two submissions, a
resume reads the run's own config, a notebook anywhere finds the shipped configs."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

import inference
import plaintune
import train
from conftest import REPO, signal_after_step, write_config
from plaintune.data.checks import warn_poor_coverage
from plaintune.data.tables import read_csv_checked
from plaintune.errors import Interrupted, UserError
from plaintune.model.hub import KOREAN_MODELS


def one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.e2e
def test_a_submission_replaces_only_its_own_file(project, capsys):
    """Without inference.output_path a submission is named after its run: two runs of one config write
    two files. Running the same model again replaces its own file and says so; a file plaintune did not
    write for this model (or one edited since) stays byte for byte unless --overwrite is given."""
    for run in ("first", "second"):
        assert train.main(["--config", "t", "training.epochs=1", f"run_name={run}"]) == 0
    args = ["--config", "t", "inference.output_path=null"]
    capsys.readouterr()
    assert inference.main([*args, "--saved_model", "first"]) == 0
    assert inference.main([*args, "--saved_model", "second"]) == 0
    out = capsys.readouterr().out
    assert "wrote output/first.csv (20 predictions)" in out and "wrote output/second.csv" in out
    assert "data: predict data/test.csv  (20 rows)" in out  # what it read, as training says it
    first = project / "output" / "first.csv"
    assert first.is_file() and (project / "output" / "second.csv").is_file()

    assert inference.main([*args, "--saved_model", "first"]) == 0  # its own file: replaced, said so
    assert "replaced output/first.csv" in capsys.readouterr().out
    # another model aimed at it, or the file edited since: refused, kept as it is
    for change in ("another model", "an edit"):
        if change == "an edit":
            first.write_text(first.read_text() + "\n")
            saved_model = "first"
        else:
            saved_model = "second"
        kept = first.read_bytes()
        assert inference.main([*args, "inference.output_path=output/first.csv", "--saved_model", saved_model]) == 2
        assert "exists and" in one_error(capsys) and first.read_bytes() == kept
    assert (
        inference.main([*args, "inference.output_path=output/first.csv", "--saved_model", "second", "--overwrite"]) == 0
    )
    assert "replaced output/first.csv" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_api_refuses_a_users_file_and_names_its_own_switch(project):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    (project / "output").mkdir()
    mine = project / "output" / "mine.csv"
    mine.write_text("id,target\na,1.0\n")
    with pytest.raises(UserError, match=r"pass overwrite=True to replace it"):
        plaintune.predict("t", "t", output_path=mine)
    assert mine.read_text() == "id,target\na,1.0\n"
    plaintune.predict("t", "t", output_path=mine, overwrite=True)
    assert len(pd.read_csv(mine)) == 20


@pytest.mark.e2e
def test_resume_continues_with_the_runs_own_config(project, tmp_path_factory, capsys):
    """A run started on data elsewhere (data.dir) resumes with `--resume run_name=X` alone: the run's
    recorded config is the truth, and the run ends bit-identical to one never stopped."""
    elsewhere = tmp_path_factory.mktemp("competition")
    for name in ("train.csv", "dev.csv", "test.csv", "sample_submission.csv"):
        shutil.move(project / "data" / name, elsewhere / name)
    start = ["--config", "t", "training.epochs=2", f"data.dir={elsewhere}"]
    cfg = yaml.safe_load((project / "configs" / "t.yaml").read_text())
    for key in ("train_path", "dev_path", "predict_path", "submission_template"):
        cfg["data"][key] = cfg["data"][key].removeprefix("data/")  # read from data.dir
    write_config(project, cfg)
    assert train.main([*start, "run_name=ref"]) == 0
    with signal_after_step(7), pytest.raises(Interrupted):
        plaintune.train("t", *start[2:], "run_name=kr")
    capsys.readouterr()
    assert train.main(["--config", "t", "--resume", "run_name=kr"]) == 0  # no data.dir, no epochs
    out = capsys.readouterr().out
    assert "resuming saved_model/kr/ as it was started" in out
    assert "the config given now reads otherwise in" in out and "data.train_path" in out
    # what comes next predicts with what the run was trained on: its own config, not the one given now
    assert "next: python inference.py --config saved_model/kr/config.yaml --saved_model kr" in out
    weights = [torch.load(project / "saved_model" / run / "last.pt", weights_only=True) for run in ("ref", "kr")]
    assert weights[0]["train_state"]["global_step"] == weights[1]["train_state"]["global_step"] == 12
    for key, tensor in weights[0]["model_state_dict"].items():
        assert torch.equal(tensor, weights[1]["model_state_dict"][key]), key
    # a key given again is compared as always: one that changes what the run is, refused
    assert train.main(["--config", "t", "--resume", "run_name=kr", "training.learning_rate=0.5"]) == 2
    assert "learning_rate" in one_error(capsys)


@pytest.mark.e2e
def test_a_notebook_in_another_folder_finds_the_shipped_configs_and_gets_python_hints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the project's configs/tiny.yaml is found
    shutil.copytree(REPO / "data" / "demo", tmp_path / "data" / "demo")  # what tiny.yaml reads
    result = plaintune.train("tiny", "training.epochs=1", "logging.tensorboard=false", "logging.wandb.mode=disabled")
    assert (tmp_path / result.run_dir / "best").is_dir()
    assert "next: plaintune.predict('tiny', 'tiny', 'training.epochs=1'" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"config 'nope' not found .*give a path to your YAML file"):
        plaintune.train("nope")


def test_config_reference_piped_into_head_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as when head has its lines
    done = subprocess.run(
        [sys.executable, "-m", "plaintune.config"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    os.close(write)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr


def test_a_field_over_the_csv_limit_names_the_unclosed_quote(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        handle.write("id,source,sentence_1,sentence_2,label\n")
        handle.write('a,s,"an unclosed quote,b,3\n' + "x" * (csv.field_size_limit() + 10) + "\nb,s,c,d,1\n")
    with pytest.raises(UserError, match=r"line 2 on, one field is longer than .* a quote \(\"\) that opens a field"):
        read_csv_checked(str(path), "data.train_path")


def test_the_coverage_warning_says_its_numbers_in_words(tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    from plaintune.data.tables import PairTable

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # MiniLM's English WordPiece
    table = PairTable(
        "k.csv",
        ["a", "b"],
        ["비행기가 이륙하고 있다.", "남자가 피리를 분다."],
        ["비행기가 이륙한다.", "여자가 노래를 부른다."],
        None,
    )
    warn_poor_coverage(tokenizer, table, "mini", KOREAN_MODELS)
    out = capsys.readouterr().out
    assert "of its tokens are unknown to the model" in out and "tokens per character" in out
    assert "klue/roberta-small" in out


@pytest.mark.e2e
def test_a_run_resumes_from_another_folder_its_data_compared_by_content(project, tmp_path, monkeypatch, capsys):
    """Relative data paths name other files from another folder: the same contents are the same run (a
    note), other contents are refused; the run's own config.yaml, damaged or deleted, is said to be."""
    with signal_after_step(3), pytest.raises(Interrupted):
        plaintune.train("t", "training.epochs=2", "run_name=kr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resume = ["--config", str(project / "configs" / "t.yaml"), "--resume", "run_name=kr"]
    resume += [f"output_dir={project / 'saved_model'}"]
    capsys.readouterr()
    assert train.main(resume) == 2  # data/train.csv is not here
    assert f"(in {elsewhere.resolve()}: relative paths start there)" in one_error(capsys)
    copy = tmp_path / "copy"
    shutil.copytree(project / "data", copy / "data")
    (copy / "data" / "dev.csv").write_text((copy / "data" / "dev.csv").read_text().replace("0", "1", 3))
    assert train.main([*resume, f"data.dir={copy}"]) == 2  # other contents behind the same names
    assert "the data changed since the checkpoint: data.dev_path" in one_error(capsys)
    assert train.main([*resume, f"data.dir={project}"]) == 0  # the same contents: the same run
    out = capsys.readouterr().out
    assert "note: config changes since the checkpoint: data.train_path, data.dev_path" in out

    with signal_after_step(3), pytest.raises(Interrupted):
        plaintune.train(
            str(project / "configs" / "t.yaml"),
            f"data.dir={project}",
            "run_name=k2",
            f"output_dir={project / 'saved_model'}",
        )
    recorded = project / "saved_model" / "k2" / "config.yaml"
    recorded.write_text("model: [\n")
    again = [*resume[:3], "run_name=k2", f"output_dir={project / 'saved_model'}", f"data.dir={project}"]
    capsys.readouterr()
    assert train.main(again) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: --resume: the run's own config {recorded}") and "delete it to resume" in line
    recorded.unlink()
    recorded.mkdir()
    assert train.main(again) == 2
    assert f"the run's own config {recorded} is not a file" in one_error(capsys)
    recorded.rmdir()
    assert train.main(again) == 0
    assert f"note: {recorded} is missing; resuming with the config given now" in capsys.readouterr().out


@pytest.mark.e2e
def test_inference_from_a_bundle_builds_the_model_it_was_trained_from(project, tiny_model_dir, capsys):
    other = project / "other-model"
    shutil.copytree(tiny_model_dir, other)
    assert train.main(["--config", "t", "training.epochs=1", f"model.name={other}", "run_name=o"]) == 0
    shutil.rmtree(project / "saved_model" / "o" / "best")
    capsys.readouterr()
    args = ["--config", "t", "--saved_model", "saved_model/o/last.pt", "inference.output_path=output/o.csv"]
    assert inference.main(args) == 0  # the config names tiny_model_dir; the bundle was trained from `other`
    assert f"note: model.name '{other}' (what saved_model/o/last.pt was trained from" in capsys.readouterr().out
    shutil.rmtree(other)  # the folder it was trained from is gone: the config's model.name is built
    assert inference.main([*args, "--overwrite"]) == 0
    assert f"was trained from '{other}', which is gone; building model.name" in capsys.readouterr().out
    # a run named after a folder beside it: which one is meant is asked, not guessed
    shutil.copytree(tiny_model_dir, project / "o")
    assert inference.main(["--config", "t", "--saved_model", "o"]) == 2
    assert "names both 'o' here and the run 'saved_model/o'" in one_error(capsys)


def test_csv_messages_name_utf16_and_keep_run_lists_short(project, capsys):
    utf16 = project / "data" / "train.csv"
    utf16.write_bytes(utf16.read_text().encode("utf-16"))
    with pytest.raises(UserError, match="it is UTF-16: save it as UTF-8, or set data.encoding=utf-16"):
        read_csv_checked(utf16, "data.train_path")
    for k in range(12):
        (project / "saved_model" / f"run{k:02d}").mkdir(parents=True)
    assert inference.main(["--config", "t", "--saved_model", "nosuch"]) == 2
    assert "run00, run01, run02, run03, run04, run05, run06, run07 and 4 more" in one_error(capsys)

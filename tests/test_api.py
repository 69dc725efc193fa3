"""The Python API: results, not exit codes; two runs in one process; the same predictions as inference.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import inference
import plaintune
import train
from plaintune import UserError


@pytest.mark.e2e
def test_train_twice_in_one_process_and_predict_like_the_command(project, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    results = [plaintune.train("t", "training.epochs=2", f"run_name=r{i}", f"output_dir={runs}") for i in (1, 2)]
    for i, result in enumerate(results, start=1):
        assert result.run_dir == runs / f"r{i}" and result.metric_name == "pearson"
        evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        pearsons = [r["pearson"] for r in evals if r["kind"] == "eval"]
        assert result.best_metric == max(pearsons) and len(result.history) == 2
        assert result.history[result.best_epoch - 1]["pearson"] == result.best_metric
    frame = plaintune.predict("t", "r1", f"output_dir={runs}")
    assert list(frame.columns) == ["id", "target"] and not (project / "output").exists()
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                "r1",
                f"output_dir={runs}",
                "inference.round=null",
                "inference.clip=null",
            ]
        )
        == 0
    )
    written = pd.read_csv(project / "output" / "sub.csv")
    assert written["id"].astype(str).tolist() == frame["id"].tolist()
    np.testing.assert_allclose(written["target"].to_numpy(), frame["target"].to_numpy(), rtol=1e-12)


@pytest.mark.e2e
def test_api_takes_a_dict_and_raises_user_errors(project, tiny_model_dir):
    from conftest import base_config

    cfg = base_config(tiny_model_dir)
    result = plaintune.train(cfg, "training.epochs=1", "run_name=d")
    assert result.best_epoch == 1
    with pytest.raises(plaintune.UserError, match="training.epochs: must be >= 1"):
        plaintune.train(cfg, "training.epochs=0")
    with pytest.raises(plaintune.UserError, match="already has a checkpoint"):
        plaintune.train(cfg, "training.epochs=1", "run_name=d")
    resumed = plaintune.train(cfg, "training.epochs=2", "run_name=d", resume=True)
    pearsons = [h["pearson"] for h in resumed.history]
    assert len(pearsons) == 2 and resumed.best_epoch == 1 + int(np.argmax(pearsons))
    assert resumed.best_metric == max(pearsons)
    path = project / "out" / "s.csv"
    frame = plaintune.predict(cfg, "d", output_path=path)
    assert path.is_file() and len(frame) == len(pd.read_csv(path))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "call, expect",
    [
        (lambda: plaintune.train("t", ["training.epochs=1"]), "overrides: each is one 'key.path=value' string"),
        (lambda: plaintune.train(5), "config: expected a config name"),
        (lambda: plaintune.predict("t", []), "saved_model: expected a run name"),
        (lambda: plaintune.predict("t", 5), "saved_model: expected a run name"),
        (lambda: plaintune.predict("t", ["t"], weights=["x"]), "weights: expected a list of numbers"),
    ],
)
def test_api_mistakes_raise_user_error(project, call, expect):
    with pytest.raises(plaintune.UserError, match=expect):
        call()


@pytest.mark.e2e
def test_time_run_name_prints_a_resume_command_that_resumes(project, capsys):
    """run_name with {time}: the printed resume call names the directory the run got. Started from
    Python, the call printed is plaintune.train's (train.py prints its command line: test_resume.py),
    and it runs as printed."""
    import signal

    from conftest import signal_after_step

    with signal_after_step(3, signal.SIGINT), pytest.raises(KeyboardInterrupt):
        plaintune.train("t", "run_name=tm-{time}")
    command = [line for line in capsys.readouterr().err.splitlines() if line.startswith("resume with: ")][0]
    call = command.removeprefix("resume with: ")
    assert call.startswith("plaintune.train('t', ") and call.endswith(", resume=True)")
    resolved = call.split("run_name=")[-1].split("'")[0]
    assert "{time}" not in resolved and (project / "saved_model" / resolved / "last.pt").is_file()
    result = eval(call, {"plaintune": plaintune})  # noqa: S307 - the line plaintune printed, run as a user would
    assert result.run_dir.name == resolved and result.history


@pytest.mark.e2e
def test_resume_problems_name_the_argument_as_the_caller_wrote_it(project, capsys):
    """train(resume=...) is named resume in its messages, from the path check to the checks of the
    bundle it continues; train.py's messages keep --resume."""
    with pytest.raises(UserError, match=r"^resume: 'x\.pt' does not exist; give a resume bundle"):
        plaintune.train("t", resume="x.pt")
    with pytest.raises(UserError, match=r"^resume: no checkpoint in saved_model/t/ .*start the run without resume$"):
        plaintune.train("t", resume=True)
    with pytest.raises(UserError, match=r"^resume takes no path with k-fold"):
        plaintune.train("t", resume="x.pt", folds=2)
    plaintune.train("t", "training.epochs=1")
    train_csv = project / "data" / "train.csv"
    train_csv.write_text("\n".join(train_csv.read_text().splitlines()[:41]) + "\n")
    with pytest.raises(UserError, match=r"^resume: the data changed since the checkpoint"):
        plaintune.train("t", "training.epochs=2", resume=True)
    with pytest.raises(UserError, match=r"^resume: the config differs from the checkpoint's in model.max_length"):
        plaintune.train("t", "training.epochs=2", "model.max_length=40", resume="saved_model/t/last.pt")
    capsys.readouterr()
    assert train.main(["--config", "t", "--resume", "x.pt"]) == 2
    assert capsys.readouterr().err.startswith("error: --resume: 'x.pt' does not exist")
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    assert capsys.readouterr().err.startswith("error: --resume: the data changed since the checkpoint")


def test_the_printed_resume_call_is_in_the_callers_language():
    """After Ctrl-C, train.py prints its command line; plaintune.train its own call (a dict config named as
    the caller's dict, not as a file that does not exist)."""
    from plaintune.commands import API, CLI, CONFIG_DICT

    assert (
        CLI.resume_call("my cfg", ["a.b=1 2"], folds=5)
        == "python train.py --config 'my cfg' 'a.b=1 2' --folds 5 --resume"
    )
    assert API.resume_call("t", ["a.b=1"], folds=5) == "plaintune.train('t', 'a.b=1', folds=5, resume=True)"
    assert API.resume_call(CONFIG_DICT, []) == "plaintune.train(<your config dict>, resume=True)"


def test_a_ddp_runs_resume_command_starts_as_many_processes(monkeypatch):
    """Under torchrun the printed resume command is a torchrun line with the run's process counts: resumed
    in one process, the effective batch would shrink."""
    from plaintune.commands import CLI
    from plaintune.runtime.distributed import DistInfo, launcher

    assert launcher(DistInfo()) == "python"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launcher(DistInfo(rank=1, local_rank=1, world_size=4)) == "torchrun --nproc_per_node 4"
    assert (
        launcher(DistInfo(rank=9, local_rank=1, world_size=8))
        == "torchrun --nnodes 2 --nproc_per_node 4 <your rendezvous options>"
    )
    assert (
        CLI.resume_call("t", [], launcher="torchrun --nproc_per_node 4")
        == "torchrun --nproc_per_node 4 train.py --config t --resume"
    )

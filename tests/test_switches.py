"""Messages name train's switches as the caller wrote them: `plaintune.train(resume=True, ...)` reads
resume=True, overwrite=True, force=True, folds; `python train.py` reads --resume, --overwrite, --force,
--folds. Each case runs once per caller and checks the one spelling is there and the other is not."""

from __future__ import annotations

import pytest

import plaintune
import train
from conftest import base_config, write_config

API = {"resume": "resume=True", "overwrite": "overwrite=True", "force": "force=True", "folds": "folds"}
CLI = {"resume": "--resume", "overwrite": "--overwrite", "force": "--force", "folds": "--folds"}


def refusal(caller: str, capsys, config: str, *overrides: str, **switches) -> str:
    """The error message `train` gives for this call, from the Python API or from train.py."""
    if caller == "api":
        with pytest.raises(plaintune.UserError) as err:
            plaintune.train(config, *overrides, **switches)
        return str(err.value)
    argv = ["--config", config, *overrides]
    for name, value in switches.items():
        if value is True:
            argv.append(f"--{name}")
        else:
            argv += [f"--{name}", str(value)]
    capsys.readouterr()
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    return err.removeprefix("error: ")


def check_spelling(caller: str, message: str, expected: list[str]) -> None:
    """`expected`: the switches the message must name (resume, overwrite, force, folds); none of the
    other caller's spellings may appear."""
    for switch in expected:
        assert (API if caller == "api" else CLI)[switch] in message, message
    if caller == "api":
        assert "--" not in message, message  # no flag at all
    else:
        assert "=True" not in message and not message.startswith(("resume", "overwrite", "force", "folds")), message


def trained_once(project) -> None:
    assert train.main(["--config", "t", "training.epochs=1"]) == 0


CALLERS = ["api", "cli"]


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_a_run_with_a_checkpoint(project, capsys, caller):
    trained_once(project)
    message = refusal(caller, capsys, "t", "training.epochs=1")
    assert "already has a checkpoint" in message
    check_spelling(caller, message, ["resume", "overwrite"])


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_resume_with_a_changed_identity_key(project, capsys, caller):
    trained_once(project)
    message = refusal(caller, capsys, "t", "training.epochs=2", "training.learning_rate=5e-4", resume=True)
    assert "differs from the checkpoint's in training.learning_rate" in message
    assert message.startswith(("resume:" if caller == "api" else "--resume:"))
    check_spelling(caller, message, ["force"])


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_resume_from_a_corrupt_last_pt(project, capsys, caller):
    trained_once(project)
    (project / "saved_model" / "t" / "last.pt").write_bytes(b"not a torch file")
    message = refusal(caller, capsys, "t", "training.epochs=2", resume=True)
    assert "no readable checkpoint" in message
    name = "resume" if caller == "api" else "--resume"
    assert message.startswith(f"{name}:") and f"without {name})" in message
    check_spelling(caller, message, ["overwrite"])


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_resume_from_a_file_that_is_not_a_torch_file(project, capsys, caller):
    (project / "junk.pt").write_text("hello")
    message = refusal(caller, capsys, "t", resume="junk.pt")
    name = "resume" if caller == "api" else "--resume"
    assert message.startswith(f"{name}: checkpoint 'junk.pt' is not a readable torch file"), message
    check_spelling(caller, message, [])


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_folds_on_a_leaderboard_config(project, tiny_model_dir, capsys, caller):
    cfg = base_config(tiny_model_dir)
    cfg["ensemble"] = {"folds": 2, "members": {"bi": ["model.kind=bi_encoder"]}}
    write_config(project, cfg, "lb")
    message = refusal(caller, capsys, "lb", folds=3)
    assert message.startswith(("folds:" if caller == "api" else "--folds:")) and "ensemble.members" in message
    check_spelling(caller, message, ["folds"])
    assert not (project / "saved_model").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_folds_checks_name_the_caller_s_switch(project, capsys, caller):
    message = refusal(caller, capsys, "t", folds=1)
    assert message.startswith(("folds: 1 folds" if caller == "api" else "--folds: 1 folds"))
    assert ("folds=5" if caller == "api" else "--folds=5") in message
    check_spelling(caller, message, ["folds"])


@pytest.mark.e2e
@pytest.mark.parametrize("caller", CALLERS)
def test_a_k_fold_that_exists(project, capsys, caller):
    assert train.main(["--config", "t", "training.epochs=1", "--folds", "2"]) == 0
    message = refusal(caller, capsys, "t", "training.epochs=1", folds=2)
    assert "holds a k-fold already" in message
    check_spelling(caller, message, ["resume", "overwrite"])

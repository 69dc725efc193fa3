"""Edges a new user hits: an EMA run's last.pt predicts and converts with the averaged weights, odd
checkpoints (integer keys, an incomplete output record) are one line, the API's argument types."""

from __future__ import annotations

import pytest
import torch

import train
from plaintune import api
from plaintune.checkpoint import command as checkpoint
from plaintune.errors import UserError
from plaintune.weights import formats


@pytest.mark.e2e
def test_an_ema_runs_last_pt_gives_the_averaged_weights(project, capsys, tmp_path):
    assert train.main(["--config", "t", "training.ema=0.9", "training.epochs=1"]) == 0
    last = project / "saved_model" / "t" / "last.pt"
    bundle = torch.load(last, weights_only=True)
    state, fmt = formats.read_state_dict(last)
    assert "ema" in fmt
    averaged = {k[len("module.") :]: v for k, v in bundle["ema_state_dict"].items() if k.startswith("module.")}
    assert set(state) == set(bundle["model_state_dict"])
    assert all(torch.equal(state[k], averaged[k]) for k in state)
    assert any(not torch.equal(state[k], bundle["model_state_dict"][k]) for k in state)  # not the raw weights
    # convert writes the averaged weights too
    out = tmp_path / "converted"
    assert checkpoint.main(["convert", str(last), str(out), "--config", "t"]) == 0
    converted, _ = formats.read_state_dict(out)
    assert all(torch.equal(converted[k], averaged[k]) for k in converted if k in averaged)


@pytest.mark.e2e
def test_a_state_dict_with_integer_keys_is_one_line(tmp_path, capsys):
    path = tmp_path / "ints.pt"
    torch.save({0: torch.zeros(2), 1: torch.ones(2)}, path)
    with pytest.raises(UserError, match="keys that are not parameter names"):
        formats.read_state_dict(path)
    assert checkpoint.main(["inspect", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "not parameter names" in err[0]


@pytest.mark.e2e
def test_a_pickle_of_another_protocol_is_one_line_without_torch_warnings(tmp_path, capsys):
    import pickle

    path = tmp_path / "p5.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=5))
    assert checkpoint.main(["inspect", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.e2e
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"resume": 1}, "resume"),
        ({"resume": 0.5}, "resume"),
        ({"overwrite": "yes"}, "overwrite"),
        ({"force": 1}, "force"),
    ],
)
def test_train_arguments_of_the_wrong_type(project, kwargs, name):
    with pytest.raises(UserError, match=f"^{name}: expected"):
        api.train("t", **kwargs)
    assert not (project / "saved_model").exists()


@pytest.mark.e2e
def test_a_truncated_last_pt_advises_what_works(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "checkpoint.save_best=false"]) == 0
    last = project / "saved_model" / "t" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=2", "--resume"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--overwrite" in line
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0  # the advice works


@pytest.mark.e2e
def test_a_fresh_start_while_the_run_trains_gets_the_locks_message(project, capsys):
    from plaintune.rundir.lock import RunLock

    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    with RunLock(project / "saved_model" / "t", "t"):  # as a training process holds it
        capsys.readouterr()
        assert train.main(["--config", "t", "training.epochs=1"]) == 2
        assert "is being trained right now" in capsys.readouterr().err

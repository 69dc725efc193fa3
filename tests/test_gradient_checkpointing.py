"""training.gradient_checkpointing: recomputed activations, the same run. transformers' switch (BERT) and
the block-by-block fallback for models without one (MPNet, ALBERT), with EMA, torch.compile, DDP and a
resume that turns it on or off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

import plaintune
from conftest import REPO, signal_after_step
from families import family_config
from plaintune.errors import Interrupted


def last_weights(project, run: str) -> dict:
    return torch.load(project / "saved_model" / run / "last.pt", weights_only=True)["model_state_dict"]


def assert_same_weights(project, first: str, second: str) -> None:
    a, b = last_weights(project, first), last_weights(project, second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def run(cfg: dict, name: str, checkpointing: bool, **training) -> None:
    cfg = {
        **cfg,
        "run_name": name,
        "model": {"dropout": 0.1, **cfg["model"]},  # dropout: the RNG is replayed
        "training": {**cfg["training"], "gradient_checkpointing": checkpointing, **training},
    }
    plaintune.train(cfg)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "family,kind,training",
    [
        ("bert", "cross_encoder", {}),  # transformers' switch
        ("mpnet", "bi_encoder", {"ema": 0.9}),  # each block wrapped (transformers has none for MPNet)
        ("albert", "cross_encoder", {}),  # ALBERT's shared block, called once per layer
    ],
)
def test_checkpointing_changes_nothing_learned(families, korean_project, family, kind, training, capsys):
    cfg = family_config(families / family, kind)
    run(cfg, "plain", False, **training)
    run(cfg, "recomputed", True, **training)
    assert "gradient checkpointing: " in capsys.readouterr().out
    assert_same_weights(korean_project, "plain", "recomputed")


@pytest.mark.e2e
def test_checkpointing_under_torch_compile(families, korean_project, monkeypatch):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    cfg = family_config(families / "mpnet", "cross_encoder")
    cfg["model"]["dropout"] = 0.0
    run(cfg, "compiled", False, epochs=1, compile=True)
    run(cfg, "recomputed", True, epochs=1, compile=True)
    assert_same_weights(korean_project, "compiled", "recomputed")


@pytest.mark.e2e
def test_a_resume_may_turn_it_on_or_off(families, korean_project):
    """A runtime setting (it changes nothing learned): stopped with it on, resumed with it off, the run
    ends where one without it ends."""
    cfg = family_config(families / "bert", "bi_encoder")
    run(cfg, "plain", False)
    with signal_after_step(5), pytest.raises(Interrupted):
        run(cfg, "switched", True)
    with_off = {**cfg, "run_name": "switched", "model": {**cfg["model"], "dropout": 0.1}}
    plaintune.train(with_off, resume=True)
    assert_same_weights(korean_project, "plain", "switched")


@pytest.mark.ddp
def test_checkpointing_under_ddp(families, korean_project):
    """Two gloo processes, the fallback wrapper (MPNet) inside DDP: the same weights as without it."""
    (korean_project / "configs").mkdir()
    for name, on in (("plain", False), ("recomputed", True)):
        cfg = family_config(families / "mpnet", "bi_encoder")
        cfg["run_name"], cfg["training"]["gradient_checkpointing"], cfg["training"]["epochs"] = name, on, 1
        (korean_project / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                str(REPO / "train.py"),
                "--config",
                name,
                "training.ddp_timeout_s=60",
            ],
            cwd=korean_project,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(korean_project, "plain", "recomputed")

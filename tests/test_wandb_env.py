"""wandb finds its own credentials: the decision between online and offline, and one line per run."""

from __future__ import annotations

import os

import pytest

import train
from plaintune.errors import UserError
from plaintune.training.tracking import wandb_mode

KEY = "k" * 40  # the shape of a wandb API key


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def netrc_for(path, host: str) -> None:
    path.write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    os.chmod(path, 0o600)


def test_self_hosted_wandb_with_its_netrc_is_online(no_wandb_env, monkeypatch):
    netrc_for(no_wandb_env, "wandb.corp.example")
    assert wandb_mode("auto") == "offline"  # a key for another server is no key for the default one
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.corp.example")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://other.example")
    assert wandb_mode("auto") == "offline"  # the decision for one server is not reused for another


def test_api_key_in_the_environment_is_online(no_wandb_env, monkeypatch):
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.corp.example")
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled" and wandb_mode("offline") == "offline"


def test_unusable_credentials_are_one_line_not_silently_offline(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(no_wandb_env.parent / "token"))  # wandb refuses both
    with pytest.raises(UserError, match="logging.wandb: wandb's credentials are unusable"):
        wandb_mode("auto")


@pytest.mark.e2e
def test_a_resumed_offline_run_is_one_line_and_its_sync_covers_every_part(project, no_wandb_env, capsys):
    args = ["--config", "t", "logging.wandb.mode=offline"]
    assert train.main([*args, "training.epochs=1"]) == 0
    first = "\n".join(capsys.readouterr())
    assert train.main([*args, "training.epochs=2", "--resume"]) == 0
    out = "\n".join(capsys.readouterr())
    wandb_dir = project / "saved_model" / "t" / "wandb"
    parts = sorted(wandb_dir.glob("offline-run-*"))
    assert len(parts) == 2
    for text in (first, out):
        lines = [
            line
            for line in text.splitlines()
            if ("wandb" in line.lower() or "W&B" in line) and not line.startswith(("next:", "resume with"))
        ]
        assert len(lines) == 1, lines
    sync = next(line for line in out.splitlines() if line.startswith("wandb:"))
    assert all(f"saved_model/t/wandb/{part.name}" in sync for part in parts) and "wandb sync" in sync
    # no links in the run directory (Drive and other mounts have none)
    assert not [p for p in (project / "saved_model" / "t").rglob("*") if p.is_symlink()]

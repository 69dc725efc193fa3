"""DDP on CPU (gloo, 2 processes via torchrun), gradient accumulation, precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from conftest import REPO


def torchrun(project, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """train.py under torchrun; a desync fails within ddp_timeout_s instead of hanging."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(REPO / "train.py"),
            "--config",
            "t",
            "training.ddp_timeout_s=60",
            *args,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
def test_process_group_gets_the_configured_timeout(project, monkeypatch):
    from datetime import timedelta

    from plaintune.errors import UserError
    from plaintune.runtime import distributed

    made = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: made.update(kwargs))
    info, _ = distributed.setup("cpu", timeout_s=45)
    assert info.world_size == 2 and made == {"backend": "gloo", "timeout": timedelta(seconds=45)}

    # train.py passes training.ddp_timeout_s on
    def setup_then_stop(device_spec, timeout_s=None):
        made["timeout_s"] = timeout_s
        raise UserError("stop here")

    monkeypatch.setattr(distributed, "setup", setup_then_stop)
    assert train.main(["--config", "t", "training.ddp_timeout_s=77"]) == 2
    assert made["timeout_s"] == 77


def weights(project, run: str) -> dict:
    return torch.load(project / "saved_model" / run / "last.pt", weights_only=True)["model_state_dict"]


@pytest.mark.ddp
def test_ddp_run_completes_and_its_metric_matches_one_process(project):
    result = torchrun(project, "run_name=ddp", "training.epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch size 16 = batch_size 8 x grad_accum_steps 1 x 2 process(es)" in result.stdout
    bundle = torch.load(project / "saved_model" / "ddp" / "last.pt", weights_only=True)
    assert bundle["world_size"] == 2 and bundle["epoch"] == 2
    assert not any(k.startswith("module.") for k in bundle["model_state_dict"])  # unwrapped keys
    assert bundle["train_state"]["global_step"] == 6  # 48 rows / (8 x 2) per step, 2 epochs
    # rank 0 alone wrote metrics: one eval line per epoch
    lines = [json.loads(x) for x in (project / "saved_model" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "eval"] == [1, 2]

    # The dev metric logged under DDP equals a one-process evaluation of the same weights.
    from plaintune.config.load import load_config
    from plaintune.data.batching import eval_loader
    from plaintune.data.tables import read_pairs
    from plaintune.data.tokenized import PairDataset
    from plaintune.inference.predicting import load_model_for_inference
    from plaintune.model.outputs import model_outputs
    from plaintune.recipe.metrics import compute_metrics

    cfg = load_config("t")
    model, tokenizer, _ = load_model_for_inference(cfg, project / "saved_model" / "ddp" / "best")
    dev = read_pairs("data/dev.csv", "k", cfg.data.columns)
    outputs = model_outputs(model, eval_loader(PairDataset(dev, tokenizer, 48), 16, 1), torch.device("cpu"))
    meta = json.loads((project / "saved_model" / "ddp" / "best" / "plaintune_state.json").read_text())
    assert compute_metrics(outputs, dev.labels, 1)["pearson"] == pytest.approx(meta["value"], abs=1e-5)

    # A DDP checkpoint resumes in one process (world-size change noted).
    code = train.main(["--config", "t", "run_name=ddp", "training.epochs=3", "--resume"])
    assert code == 0


NO_DROPOUT = [
    "model.dropout=0.0",
    "training.scheduler={name: constant}",
    "training.max_grad_norm=null",
    "training.epochs=1",
    "data.dev_path=data/dev.csv",
]


def sixteen_rows(project):
    lines = (project / "data" / "train.csv").read_text().splitlines()
    (project / "data" / "train.csv").write_text("\n".join(lines[:17]) + "\n")


@pytest.mark.ddp
def test_one_ddp_step_equals_one_big_batch(project):
    sixteen_rows(project)
    result = torchrun(project, "run_name=ddp", "training.batch_size=8", *NO_DROPOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train.main(["--config", "t", "run_name=single", "training.batch_size=16", *NO_DROPOUT]) == 0
    ddp, single = weights(project, "ddp"), weights(project, "single")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
    for run in ("ddp", "single"):
        state = torch.load(project / "saved_model" / run / "last.pt", weights_only=True)["train_state"]
        assert state["global_step"] == 1


@pytest.mark.e2e
def test_gradient_accumulation_equals_the_big_batch(project, tiny_model_dir):
    sixteen_rows(project)
    assert (
        train.main(
            ["--config", "t", "run_name=accum", "training.batch_size=8", "training.grad_accum_steps=2", *NO_DROPOUT]
        )
        == 0
    )
    assert train.main(["--config", "t", "run_name=big", "training.batch_size=16", *NO_DROPOUT]) == 0
    accum, big = weights(project, "accum"), weights(project, "big")
    from transformers import AutoModelForSequenceClassification

    start = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).state_dict()
    assert not torch.equal(big["classifier.weight"], start["classifier.weight"])  # a step was taken
    for key in big:
        torch.testing.assert_close(accum[key], big[key], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_micro_batches_equal_one_pass_over_the_batch(project):
    """A batch cut into length-sorted micro-batches takes the same optimizer step as one pass."""
    sixteen_rows(project)
    from plaintune.data.batching import MicroBatchCollator
    from plaintune.data.tokenized import PadCollator

    items = [{"index": i, "input_ids": [1] * n, "label": 0.0} for i, n in enumerate([9, 30, 4, 17])]
    parts = MicroBatchCollator(PadCollator(0), max_tokens=40, pass_overhead=0)(items)
    assert [p["index"].tolist() for p in parts] == [[1], [3], [0], [2]]  # longest first, each within 40 tokens
    assert (
        train.main(
            ["--config", "t", "run_name=cut", "training.batch_size=16", "training.micro_batch_tokens=64", *NO_DROPOUT]
        )
        == 0
    )
    assert (
        train.main(
            [
                "--config",
                "t",
                "run_name=whole",
                "training.batch_size=16",
                "training.micro_batch_tokens=null",
                *NO_DROPOUT,
            ]
        )
        == 0
    )
    cut, whole = weights(project, "cut"), weights(project, "whole")
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_accumulation_resume_mid_epoch_is_exact(project):
    """Killed mid-epoch with grad_accum_steps=2, resumed: the same weights as an uninterrupted run."""
    from test_resume import run_helper

    args = ["training.grad_accum_steps=2", "checkpoint.every_n_steps=1"]  # 3 optimizer steps per epoch
    assert run_helper(project, ["run_name=full", *args]).returncode == 0
    assert run_helper(project, ["run_name=cut", *args], "step:5").returncode == -9  # last save: step 4
    saved = torch.load(project / "saved_model" / "cut" / "last.pt", weights_only=True)["train_state"]
    assert saved["global_step"] == 4 and saved["step_in_epoch"] == 2  # two batches of epoch 2 done
    assert run_helper(project, ["run_name=cut", *args, "--resume"]).returncode == 0
    full, cut = weights(project, "full"), weights(project, "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.e2e
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(project, precision):
    assert train.main(["--config", "t", f"training.precision={precision}", "training.epochs=1"]) == 0
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in bundle["model_state_dict"].values() if t.is_floating_point())
    assert (bundle["scaler_state_dict"] is not None) == (precision == "fp16")
    assert np.isfinite(bundle["loss"])


@pytest.mark.e2e
def test_compiled_model_saves_clean_keys(project, monkeypatch):
    """torch.compile wraps the model in _orig_mod; checkpoints hold the plain keys."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    assert train.main(["--config", "t", "training.compile=true", "training.epochs=1"]) == 0
    keys = weights(project, "t").keys()
    assert keys and not any("_orig_mod" in k for k in keys)

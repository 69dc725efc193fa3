"""What only a GPU can show: fp16 with its gradient scaler, bf16, auto's CUDA choice, torchrun on one GPU.

Every test here carries the `cuda` marker and is skipped where CUDA is not available
(CI and the 2-core development machines). bench/gpu_check runs them on a GPU:
`pytest -m cuda tests/test_cuda.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from conftest import REPO
from plaintune.runtime import precision

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check runs it)"),
]


def bundle(project, run: str = "t") -> dict:
    return torch.load(project / "saved_model" / run / "last.pt", weights_only=True)


@pytest.mark.e2e
def test_auto_precision_on_this_gpu_is_bf16_or_fp16_by_capability(project):
    capability = torch.cuda.get_device_capability(0)
    expected = "bf16" if capability >= (8, 0) else "fp16" if capability >= (7, 0) else "fp32"
    assert precision.for_training("auto", torch.device("cuda", 0), None)[0] == expected
    assert train.main(["--config", "t", "device=cuda", "training.precision=auto", "training.epochs=1"]) == 0
    saved = bundle(project)["resolved"]["training.precision"]
    assert saved == expected  # the run records the concrete choice, so a resume keeps it


@pytest.mark.e2e
def test_fp16_trains_with_the_scaler_and_resumes_exactly(project):
    """fp16 autocast with a GradScaler: the scale is saved with last.pt and a resume continues it."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    common = ["--config", "t", "device=cuda", "training.precision=fp16", "training.epochs=2"]
    assert train.main([*common, "run_name=ref"]) == 0
    reference = bundle(project, "ref")
    scaler = reference["scaler_state_dict"]
    assert scaler is not None and scaler["scale"] > 0 and np.isfinite(reference["loss"])
    assert all(t.dtype == torch.float32 for t in reference["model_state_dict"].values() if t.is_floating_point())

    steps = {"n": 0}

    def interrupt_after_step_4(optimizer, args, kwargs):  # mid-epoch 1 (6 steps per epoch)
        steps["n"] += 1
        if steps["n"] == 4:
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(interrupt_after_step_4)
    try:
        assert train.main([*common, "run_name=cut"]) == 130
    finally:
        handle.remove()
    assert bundle(project, "cut")["scaler_state_dict"]["scale"] > 0
    assert train.main([*common, "run_name=cut", "--resume"]) == 0
    resumed = bundle(project, "cut")
    assert resumed["scaler_state_dict"] == scaler
    for key, tensor in reference["model_state_dict"].items():
        torch.testing.assert_close(resumed["model_state_dict"][key], tensor, rtol=0, atol=1e-5, msg=key)


@pytest.mark.e2e
def test_bf16_trains_without_a_scaler_and_predicts(project):
    assert train.main(["--config", "t", "device=cuda", "training.precision=bf16", "training.epochs=1"]) == 0
    saved = bundle(project)
    assert saved["scaler_state_dict"] is None and np.isfinite(saved["loss"])
    assert all(t.dtype == torch.float32 for t in saved["model_state_dict"].values() if t.is_floating_point())
    import inference

    assert inference.main(["--config", "t", "--saved_model", "t", "device=cuda", "inference.precision=bf16"]) == 0
    assert (project / "output" / "sub.csv").exists()


@pytest.mark.e2e
def test_torchrun_on_one_gpu_trains_and_saves_plain_keys(project):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            str(REPO / "train.py"),
            "--config",
            "t",
            "device=auto",
            "training.precision=auto",
            "training.epochs=2",
            "training.ddp_timeout_s=120",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = bundle(project)
    assert saved["world_size"] == 1 and saved["epoch"] == 2
    assert not any(k.startswith("module.") for k in saved["model_state_dict"])
    evals = [
        json.loads(line)
        for line in (project / "saved_model" / "t" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert len(evals) == 2 and all(np.isfinite(e["pearson"]) for e in evals)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["cross_encoder", "bi_encoder"])
@pytest.mark.parametrize("tokenizer_kind", ["wordpiece", "bpe", "sentencepiece"])
def test_each_tokenizer_kind_trains_and_predicts_on_the_gpu(families, korean_project, tokenizer_kind, kind):
    """One family of each tokenizer kind (KLUE-RoBERTa's shape, RoBERTa, XLM-R with 250k rows) on the GPU,
    in auto precision, with gradient checkpointing on the cross-encoders: the inputs a model cannot take
    would surface here as a device-side assert."""
    import plaintune
    from families import BY_TOKENIZER_KIND, family_config

    cfg = family_config(families / BY_TOKENIZER_KIND[tokenizer_kind], kind)
    cfg["device"], cfg["training"]["precision"] = "cuda", "auto"
    cfg["training"]["gradient_checkpointing"] = kind == "cross_encoder"
    result = plaintune.train(cfg)
    assert np.isfinite(result.best_metric)
    predicted = plaintune.predict(cfg, "t", write=True)["target"].to_numpy()
    assert len(predicted) == 20 and np.isfinite(predicted).all()

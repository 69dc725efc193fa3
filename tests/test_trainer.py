"""Trainer behaviour: validation over the whole dev set, best selection, resume equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import train
from plaintune.config.load import load_config
from plaintune.data.batching import TrainBatchSampler, eval_loader
from plaintune.data.tables import read_pairs
from plaintune.data.tokenized import PairDataset
from plaintune.model.objective import Objective
from plaintune.model.outputs import model_outputs
from plaintune.recipe.metrics import compute_metrics
from plaintune.rundir.layout import RunFiles
from plaintune.training.tracking import Tracker
from plaintune.training.trainer import Batches, LoopOptions, Trainer


def pearson(predictions, labels) -> float:
    return compute_metrics(predictions, labels, 1)["pearson"]


class BatchShiftedModel(nn.Module):
    """Predicts from sequence length, plus an offset that grows with each forward call.

    Inside one batch the predictions correlate with length; across batches the
    offset dominates. Per-batch Pearson and whole-set Pearson therefore differ.
    """

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        self.calls += 1
        value = attention_mask.sum(1, keepdim=True).float() * 0.1 * self.scale + 5.0 * self.calls
        return SimpleNamespace(logits=value)


def test_validation_pearson_is_over_the_whole_set(project, tiny_model_dir):
    from transformers import AutoTokenizer

    cfg = load_config("t")
    table = read_pairs("data/dev.csv", "data.dev_path", cfg.data.columns)
    # labels that follow length, so each batch alone correlates well
    dataset = PairDataset(table, AutoTokenizer.from_pretrained(tiny_model_dir), 48)
    table.labels = (dataset.lengths / dataset.lengths.max() * 5).astype(np.float32)
    dataset.labels = table.labels
    loader = eval_loader(dataset, batch_size=6, num_labels=1)

    model = BatchShiftedModel()
    outputs = model_outputs(model, loader, torch.device("cpu"))
    whole = pearson(outputs, table.labels)
    per_batch = np.nanmean([pearson(outputs[b], table.labels[b]) for b in loader.batch_sampler])
    assert abs(whole - per_batch) > 0.1, "the fixture must tell the two apart"

    model.calls = 0
    batches = Batches(train_loader=SimpleNamespace(batch_sampler=None), dev_loader=loader, dev_labels=table.labels)
    trainer = Trainer(
        model,
        Objective(1, "mse"),
        optim=None,
        batches=batches,
        files=RunFiles(project),
        tracker=Tracker(project, {}, "pearson", active=False),
        options=LoopOptions(epochs=1),
    )
    metrics, predictions = trainer.validate()
    metric, loss = metrics["pearson"], metrics["loss"]
    assert metric == pytest.approx(whole, abs=1e-6)
    assert predictions == pytest.approx(outputs, abs=1e-6)  # every dev row, in input order
    assert loss == pytest.approx(float(np.mean((outputs - table.labels) ** 2)), rel=1e-5)


def final_weights(project) -> dict:
    return torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["model_state_dict"]


@pytest.mark.e2e
def test_resume_after_epoch_equals_uninterrupted(project):
    """Run 1 epoch, then --resume with epochs=2: bit-identical to 2 epochs straight.

    A constant schedule keeps the lr independent of the planned epoch count.
    """
    constant = "training.scheduler={name: constant}"
    assert train.main(["--config", "t", "run_name=c", constant, "training.epochs=1"]) == 0
    assert train.main(["--config", "t", "run_name=c", constant, "--resume", "training.epochs=2"]) == 0
    assert train.main(["--config", "t", "run_name=d", constant, "training.epochs=2"]) == 0
    resumed = torch.load(project / "saved_model" / "c" / "last.pt", weights_only=True)
    straight = torch.load(project / "saved_model" / "d" / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    assert resumed["train_state"]["global_step"] == straight["train_state"]["global_step"]
    for key, tensor in straight["model_state_dict"].items():
        assert torch.equal(tensor, resumed["model_state_dict"][key]), key


@pytest.mark.e2e
def test_training_is_reproducible_from_the_seed(project):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    first = final_weights(project)
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0
    second = final_weights(project)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bucket_sampler_len_matches_steps(project):
    sampler = TrainBatchSampler(np.arange(48) % 7 + 5, 8, seed=0)
    assert len(sampler) == 6


def nan_loss_from(monkeypatch, step: int) -> None:
    """The training loss is NaN from optimizer step `step` on (a diverging run, made deterministic).
    Validation's dev loss (computed without gradients) stays as it is."""
    # The trainer calls scaler.update() once per optimizer step, also when fp16 skips the step.
    taken = {"steps": 0}
    real_update = torch.amp.GradScaler.update

    def update(self, *args, **kwargs):
        taken["steps"] += 1
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    real = Objective.loss

    def loss(self, logits, labels):
        value = real(self, logits, labels)
        training = torch.is_grad_enabled()
        return value * float("nan") if training and taken["steps"] + 1 >= step else value  # this batch's step

    monkeypatch.setattr(Objective, "loss", loss)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "precision, nan_from, log_every, when",
    [
        ("fp32", 8, 1, "at optimizer step 8"),  # seen at the step-8 log
        ("fp16", 9, 4, "between optimizer steps 8 (last seen finite) and 10"),  # seen before the step-10 save
    ],
)
def test_non_finite_loss_stops_at_once_and_keeps_the_last_finite_state(
    project, monkeypatch, capsys, precision, nan_from, log_every, when
):
    from safetensors.torch import load_file

    nan_loss_from(monkeypatch, nan_from)
    # 6 steps per epoch; last.pt at steps 5 (every_n_steps) and 6 (epoch end), then at 10 and 12
    code = train.main(["--config", "t", f"training.precision={precision}", f"training.log_every_n_steps={log_every}"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the training loss became non-finite"), err
    assert "Traceback" not in err
    assert when in err and "training.learning_rate" in err and "last.pt keeps step 6" in err
    assert ("training.precision fp16" in err) == (precision == "fp16")
    saved = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert saved["train_state"]["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in saved["model_state_dict"].values() if t.is_floating_point())
    best = project / "saved_model" / "t" / "best"
    assert json.loads((best / "plaintune_state.json").read_text())["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in load_file(best / "model.safetensors").values())


@pytest.mark.e2e
def test_non_finite_metric_is_never_best_nor_top_k_and_is_no_improvement(project, monkeypatch):
    metrics = iter([float("nan"), 0.3, float("nan"), float("inf")])
    monkeypatch.setattr(Trainer, "validate", lambda self: ({"pearson": next(metrics), "loss": 1.0}, None))
    assert (
        train.main(
            ["--config", "t", "training.epochs=5", "training.early_stopping.patience=2", "checkpoint.keep_top_k=3"]
        )
        == 0
    )
    run = project / "saved_model" / "t"
    state = torch.load(run / "last.pt", weights_only=True)["train_state"]
    assert (state["best_epoch"], state["best_metric"]) == (2, 0.3)
    assert state["stopped_early"] and state["epoch"] == 4  # epochs 3 (NaN) and 4 (inf) did not improve
    assert sorted(p.name for p in (run / "top").iterdir()) == ["epoch-002"]
    assert json.loads((run / "best" / "plaintune_state.json").read_text())["epoch"] == 2


def test_is_better_only_for_finite_metrics():
    from plaintune.recipe.metrics import is_better

    nan, inf = float("nan"), float("inf")
    assert not is_better(nan, None) and not is_better(inf, None) and not is_better(-inf, None)
    assert not is_better(nan, 0.2) and not is_better(inf, 0.2)
    assert is_better(0.1, None) and is_better(0.3, 0.2) and not is_better(0.2, 0.2)
    assert is_better(-0.5, nan)  # a best from an older bundle that kept a NaN


@pytest.mark.e2e
def test_ema_validates_and_saves_the_moving_average_and_resumes_bit_identically(project, monkeypatch):
    """training.ema: after each optimizer step a = d a + (1 - d) w (a = w after the first); best/ holds
    the average, last.pt the raw weights and the average, and a resume continues both exactly."""
    import torch
    from safetensors.torch import load_file
    from torch.optim.swa_utils import AveragedModel

    given = []
    update = AveragedModel.update_parameters

    def spy(self, model):
        given.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", spy)
    decay = 0.8
    assert train.main(["--config", "t", f"training.ema={decay}", "training.epochs=1"]) == 0
    expected = given[0]
    for weights in given[1:]:
        expected = {
            k: decay * expected[k] + (1 - decay) * w if w.is_floating_point() else w for k, w in weights.items()
        }
    best = load_file(str(project / "saved_model" / "t" / "best" / "model.safetensors"))
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert len(given) == bundle["train_state"]["global_step"] > 3
    moved = 0
    for key, value in best.items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
        moved += not torch.equal(bundle["model_state_dict"][key], value)  # last.pt: the raw weights
    assert moved > 0
    assert int(bundle["ema_state_dict"]["n_averaged"]) == len(given)

    monkeypatch.setattr(AveragedModel, "update_parameters", update)
    args = ["--config", "t", f"training.ema={decay}", "training.epochs=2"]
    assert train.main([*args, "run_name=full"]) == 0
    helper = Path(__file__).parent / "crashing_train.py"  # SIGKILL after step 8; last.pt is from step 5
    killed = subprocess.run(
        [sys.executable, str(helper), *args, "run_name=cut"],
        cwd=project,
        timeout=300,
        env={**os.environ, "KILL_PLAN": "step:8", "PYTHONHASHSEED": "0"},
        capture_output=True,
    )
    assert killed.returncode == -9
    assert train.main([*args, "run_name=cut", "--resume"]) == 0
    full = torch.load(project / "saved_model" / "full" / "last.pt", weights_only=True)
    cut = torch.load(project / "saved_model" / "cut" / "last.pt", weights_only=True)
    for key, tensor in full["ema_state_dict"].items():
        assert torch.equal(tensor, cut["ema_state_dict"][key]), key


@pytest.mark.e2e
def test_optimizer_state_is_freed_before_the_best_model_is_read_back(project, monkeypatch):
    """Once last.pt holds the optimizer's moments, the final report reads best/ back without them in memory
    (for a base model they are twice the weights: the run's peak was this reload)."""
    import plaintune.training.run as run_module

    seen = {}
    real_finish = run_module.finish

    def finish(cfg, trainer, *args, **kwargs):
        seen["moments"] = len(trainer.optim.optimizer.state)
        return real_finish(cfg, trainer, *args, **kwargs)

    monkeypatch.setattr(run_module, "finish", finish)
    assert train.main(["--config", "t"]) == 0
    assert seen == {"moments": 0}
    saved = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert saved["optimizer_state_dict"]["state"]  # the resume bundle keeps them


def test_heap_retention_is_limited_on_glibc_unless_the_user_chose(monkeypatch):
    """CPU training fixes glibc's mmap threshold (large freed blocks go back to the system); a user's
    MALLOC_MMAP_THRESHOLD_ is theirs; elsewhere nothing is set and nothing fails."""
    import platform

    from plaintune.runtime import memory

    memory.release()  # trims without error, whatever the C library
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.limit_heap_retention() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1:glibc.malloc.mmap_threshold=65536")
    assert memory.limit_heap_retention() is False  # the same choice in glibc's newer spelling
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert memory.limit_heap_retention() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.limit_heap_retention() is False
    memory.release()

"""Trainer behaviour: validation over the whole dev set, best selection, resume equivalence."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import train
from plaintune.config import load_config
from plaintune.data import PairDataset, eval_loader, read_pairs
from plaintune.objective import Objective
from plaintune.predict import pearson, predict
from plaintune.sampling import BucketBatchSampler
from plaintune.tracking import Tracker
from plaintune.saver import CheckpointSaver
from plaintune.trainer import LoopOptions, Trainer


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
    outputs = predict(model, loader, torch.device("cpu"))
    whole = pearson(outputs, table.labels)
    per_batch = np.nanmean([pearson(outputs[b], table.labels[b]) for b in loader.batch_sampler])
    assert abs(whole - per_batch) > 0.1, "the fixture must tell the two apart"

    model.calls = 0
    trainer = Trainer(model=model, tokenizer=None, objective=Objective(1, "mse"), optimizer=None, scheduler=None,
                      scheduler_when="step", train_loader=SimpleNamespace(batch_sampler=None), dev_loader=loader,
                      dev_labels=table.labels, device=torch.device("cpu"), saver=CheckpointSaver(project),
                      tracker=Tracker(project, {}, "t", {}, "pearson", active=False), config={},
                      options=LoopOptions(epochs=1))
    metric, loss = trainer.validate()
    assert metric == pytest.approx(whole, abs=1e-6)
    assert loss == pytest.approx(float(np.mean((outputs - table.labels) ** 2)), rel=1e-5)


def final_weights(project) -> dict:
    return torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["model_state_dict"]


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


def test_training_is_reproducible_from_the_seed(project):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    first = final_weights(project)
    assert train.main(["--config", "t", "training.epochs=1", "--overwrite"]) == 0
    second = final_weights(project)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bucket_sampler_len_matches_steps(project):
    sampler = BucketBatchSampler(np.arange(48) % 7 + 5, 8, seed=0)
    assert len(sampler) == 6

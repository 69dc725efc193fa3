"""Every loss, optimizer and scheduler name builds the right object; weight decay skips biases and norm weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plaintune.recipe import optim


@pytest.mark.parametrize(
    "name,cls",
    [
        ("MSELoss", nn.MSELoss),
        ("mse", nn.MSELoss),
        ("L1Loss", nn.L1Loss),
        ("l1", nn.L1Loss),
        ("HuberLoss", nn.HuberLoss),
        ("huber", nn.HuberLoss),
        ("SmoothL1Loss", nn.SmoothL1Loss),
        ("smooth_l1", nn.SmoothL1Loss),
        ("CrossEntropyLoss", nn.CrossEntropyLoss),
        ("cross_entropy", nn.CrossEntropyLoss),
        ("BCEWithLogitsLoss", nn.BCEWithLogitsLoss),
        ("bce", nn.BCEWithLogitsLoss),
    ],
)
def test_losses(name, cls):
    assert isinstance(optim.build_loss(name), cls)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 1)


@pytest.mark.parametrize(
    "spec,cls",
    [
        ({"name": "AdamW", "weight_decay": 0.01, "eps": 1e-7, "betas": [0.9, 0.98]}, torch.optim.AdamW),
        ({"name": "adam"}, torch.optim.Adam),
        ({"name": "SGD", "momentum": 0.9}, torch.optim.SGD),
    ],
)
def test_optimizers_pass_keyword_arguments(spec, cls):
    optimizer = optim.build_optimizer(spec, Tiny(), learning_rate=1e-3)
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-3
    if "eps" in spec:
        assert group["eps"] == 1e-7 and group["betas"] == (0.9, 0.98)


def test_head_lr_multiplier_and_layer_decay(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)  # 2 layers
    optimizer = optim.build_optimizer(
        {"name": "AdamW", "weight_decay": 0.01}, model, 1e-3, head_multiplier=10.0, layer_decay=0.5
    )
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["classifier.weight"])] == pytest.approx(1e-2)
    assert lr_of[id(params["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(2.5e-4)
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)
    assert lr_of[id(params["bert.pooler.dense.weight"])] == pytest.approx(1e-3)
    assert len(lr_of) == len(params)


def test_no_weight_decay_on_biases_and_layernorm():
    model = Tiny()
    optimizer = optim.build_optimizer({"name": "AdamW", "weight_decay": 0.1}, model, 1e-3)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.dense.weight), id(model.head.weight)}


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = Tiny()
    model.dense.weight.requires_grad_(False)
    optimizer = optim.build_optimizer({"name": "AdamW"}, model, 1e-3)
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.dense.weight) not in params and len(params) == 5


def lrs(spec, steps=10, steps_per_epoch=5, epochs=2):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, when = optim.build_scheduler(spec, optimizer, steps_per_epoch, epochs)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values, when


def test_linear_warmup_then_decay():
    values, when = lrs({"name": "linear", "warmup_ratio": 0.2})
    assert when == "step"
    assert values[0] == 0.0 and values[2] == pytest.approx(1.0) and values[-1] == pytest.approx(0.125)


def test_cosine_and_constant_and_step():
    cosine, _ = lrs({"name": "cosine", "warmup_steps": 0})
    assert cosine[0] == pytest.approx(1.0) and cosine[5] == pytest.approx(0.5)
    constant, _ = lrs({"name": "constant", "warmup_steps": 2})
    assert constant[:3] == [0.0, 0.5, 1.0] and constant[-1] == 1.0
    step, _ = lrs({"name": "step", "step_size": 1, "gamma": 0.5})  # step_size in epochs
    assert step[4] == 1.0 and step[5] == 0.5


def test_plateau_is_stepped_on_the_metric():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, when = optim.build_scheduler(
        {"name": "ReduceLROnPlateau", "factor": 0.5, "patience": 0}, optimizer, 5, 3
    )
    assert when == "metric"
    scheduler.step(0.5)
    scheduler.step(0.4)  # worse (mode max) -> reduce
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_cosent_is_the_published_formula_and_only_the_order_counts():
    """log(1 + sum_{y_i > y_j} exp(20 (s_j - s_i))), by brute force; ties add nothing; a monotone
    change of the labels leaves it unchanged; scores in label order make it small."""
    import math

    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(9, generator=generator) * 2 - 1
    labels = torch.tensor([0.0, 1.2, 1.2, 3.0, 5.0, 2.2, 4.8, 0.4, 3.0])
    brute = 1 + sum(math.exp(20 * (scores[j] - scores[i])) for i in range(9) for j in range(9) if labels[i] > labels[j])
    loss = optim.build_loss("CoSENTLoss")
    assert float(loss(scores, labels)) == pytest.approx(math.log(brute), rel=1e-5)
    assert float(loss(scores, labels**3)) == pytest.approx(float(loss(scores, labels)), rel=1e-6)
    assert float(loss(labels / 5, labels)) < float(loss(-labels / 5, labels))
    assert float(loss(scores, torch.full((9,), 2.0))) == 0.0  # no ordered pair: log(1)


@pytest.mark.e2e
def test_cosent_trains_a_bi_encoder_in_whole_batches(project, monkeypatch):
    """The loss couples the pairs of a batch: every batch is one pass, whatever the micro-batch budget."""
    import train
    from plaintune.data import batching

    seen = []
    original = batching.MicroBatchCollator.__call__

    def spy(self, items):
        parts = original(self, items)
        seen.append(len(parts))
        return parts

    monkeypatch.setattr(batching.MicroBatchCollator, "__call__", spy)
    assert (
        train.main(
            [
                "--config",
                "t",
                "model.kind=bi_encoder",
                "training.loss=cosent",
                "training.epochs=1",
                "training.micro_batch_tokens=16",
            ]
        )
        == 0
    )
    assert seen and set(seen) == {1}
    seen.clear()  # the same budget cuts batches of a per-pair loss
    assert (
        train.main(
            [
                "--config",
                "t",
                "model.kind=bi_encoder",
                "training.loss=mse",
                "training.epochs=1",
                "training.micro_batch_tokens=16",
                "--overwrite",
            ]
        )
        == 0
    )
    assert max(seen) > 1

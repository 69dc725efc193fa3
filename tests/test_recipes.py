"""Score-improving options: label scaling with a sigmoid head, head bias, ensembles, symmetric averaging."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train
from plaintune.model.objective import Objective


def test_label_scaling_round_trip():
    objective = Objective(1, "bce", "sigmoid", (0.0, 5.0))
    labels = torch.tensor([0.2, 1.0, 2.5, 4.9])
    unit = objective.to_unit(labels)
    assert torch.allclose(unit, labels / 5)
    logits = torch.logit(unit)
    np.testing.assert_allclose(objective.predictions(logits.numpy()), labels.numpy(), rtol=1e-5)
    # BCE on scaled labels is minimal at the exact logits
    assert objective.loss(logits[:, None], labels) < objective.loss(logits[:, None] + 0.5, labels)
    assert objective.initial_bias(2.5) == pytest.approx(0.0, abs=1e-9)
    other = Objective(1, "mse", "sigmoid", (1.0, 3.0))
    assert other.predictions(np.array([0.0]))[0] == pytest.approx(2.0)


@pytest.mark.e2e
def test_sigmoid_head_trains_predicts_in_range_and_is_remembered(project, capsys):
    args = [
        "model.output_activation=sigmoid",
        "training.loss=bce",
        "model.head_bias_init=label_mean",
        "training.head_lr_multiplier=5",
        "training.epochs=1",
    ]
    assert train.main(["--config", "t", *args]) == 0
    # the head bias started at logit(mean label / 5)
    import json

    config = json.loads((project / "saved_model" / "t" / "best" / "config.json").read_text())
    assert config["plaintune_output"] == {
        "activation": "sigmoid",
        "low": 0.0,
        "high": 5.0,
        "kind": "cross_encoder",
        # what it was fed: inference truncates to the trained length too
        "max_length": 48,
        "token_type_ids": True,
        "prompt": "",
    }
    # inference reads the activation from the checkpoint even if the config forgot it
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                "t",
                "inference.clip=null",
                "inference.round=null",
                "model.output_activation=none",
                "training.loss=mse",
            ]
        )
        == 0
    )
    assert (
        "output mapping: sigmoid (recorded by plaintune with the checkpoint; "
        "the config's model.output_activation=none is ignored" in capsys.readouterr().out
    )
    target = pd.read_csv(project / "output" / "sub.csv")["target"]
    assert ((target > 0) & (target < 5)).all()


def test_head_bias_starts_at_the_label_mean(project, tiny_model_dir):
    from plaintune.config.load import load_config
    from plaintune.model.loading import build_model, init_head_bias

    objective = Objective(1, "bce", "sigmoid")
    spec = load_config("t").model
    fresh = build_model({**spec, "from_scratch": True})
    assert init_head_bias(fresh, objective.initial_bias(1.0))
    assert float(fresh.classifier.bias.detach()) == pytest.approx(np.log(0.2 / 0.8))
    # a head that came trained with the checkpoint (tiny_model_dir has one) is left alone
    loaded = build_model(spec)
    before = loaded.classifier.bias.detach().clone()
    assert not init_head_bias(loaded, objective.initial_bias(1.0))
    assert torch.equal(loaded.classifier.bias.detach(), before)


def predictions(project, *args) -> np.ndarray:
    # each call replaces the last one's submission, written for other models
    assert inference.main(["--config", "t", "inference.round=null", "inference.clip=null", "--overwrite", *args]) == 0
    return pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()


@pytest.fixture
def two_runs(project):
    assert train.main(["--config", "t", "run_name=a", "training.epochs=1", "seed=1"]) == 0
    assert (
        train.main(["--config", "t", "run_name=b", "training.epochs=1", "seed=2", "training.learning_rate=3e-3"]) == 0
    )
    return project


@pytest.mark.e2e
def test_ensemble_is_the_weighted_average(two_runs, capsys):
    project = two_runs
    a = predictions(project, "--saved_model", "a")
    b = predictions(project, "--saved_model", "b")
    assert not np.allclose(a, b)
    mean = predictions(project, "--saved_model", "a", "b")
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=0, atol=1e-6)
    weighted = predictions(project, "--saved_model", "a", "b", "--weights", "1", "3", "data.test_path=data/dev.csv")
    np.testing.assert_allclose(weighted, 0.25 * a + 0.75 * b, rtol=0, atol=1e-6)
    out = capsys.readouterr().out
    assert "member a: test pearson" in out and "member b: test pearson" in out and "ensemble test pearson" in out
    assert inference.main(["--config", "t", "--saved_model", "a", "b", "--weights", "1"]) == 2


def test_a_labelled_file_scored_against_itself_is_predicted_once(two_runs, monkeypatch, capsys):
    """predict_path == test_path (scoring a held-out set): each model predicts the pairs once, and the
    printed test score is the score of what was returned."""
    from plaintune import predict
    from plaintune.inference import predicting
    from plaintune.recipe.metrics import compute_metrics

    calls = []
    real = predicting.member_outputs
    monkeypatch.setattr(predicting, "member_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    frame = predict("t", ["a", "b"], "data.predict_path=data/dev.csv", "data.test_path=data/dev.csv")
    assert len(calls) == 2  # once per model, not once for predict and once for test
    labels = pd.read_csv(two_runs / "data" / "dev.csv")["label"].to_numpy()
    pearson = compute_metrics(frame["target"].to_numpy(), labels, 1)["pearson"]
    assert f"ensemble test pearson {pearson:.4f}" in capsys.readouterr().out
    predict("t", ["a"], "data.predict_path=data/dev.csv", "data.test_path=data/train.csv")
    assert len(calls) == 2 + 2  # different pairs: predicted apart


@pytest.mark.e2e
def test_symmetric_averaging_is_the_mean_of_both_orders(two_runs):
    project = two_runs
    straight = predictions(project, "--saved_model", "a")
    frame = pd.read_csv(project / "data" / "test.csv")
    frame[["sentence_1", "sentence_2"]] = frame[["sentence_2", "sentence_1"]].to_numpy()
    frame.to_csv(project / "data" / "test_swapped.csv", index=False)
    swapped = predictions(project, "--saved_model", "a", "data.predict_path=data/test_swapped.csv")
    assert not np.allclose(straight, swapped)  # a cross-encoder is not symmetric by itself
    symmetric = predictions(project, "--saved_model", "a", "inference.symmetric=true")
    np.testing.assert_allclose(symmetric, (straight + swapped) / 2, rtol=0, atol=1e-6)


@pytest.mark.e2e
def test_swap_augmentation_doubles_the_training_pairs(project):
    assert train.main(["--config", "t", "training.epochs=1", "data.augment.swap=true"]) == 0
    state = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)["train_state"]
    assert state["global_step"] == 12  # 2 x 48 pairs / batch 8


def test_swapped_table():
    from plaintune.data.tables import PairTable, with_swapped_pairs

    table = PairTable("p", ["x"], ["A."], ["B."], np.array([3.0], dtype=np.float32))
    both = with_swapped_pairs(table)
    assert both.sentence_1 == ["A.", "B."] and both.sentence_2 == ["B.", "A."] and both.labels.tolist() == [3.0, 3.0]


@pytest.mark.e2e
def test_bi_encoder_train_save_load_predict(project, capsys):
    """SBERT-style bi-encoder through the same trainer, checkpoints and inference."""
    args = ["model.kind=bi_encoder", "training.epochs=2", "training.learning_rate=1e-3"]
    assert train.main(["--config", "t", *args]) == 0
    best = project / "saved_model" / "t" / "best"
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(best)  # best/ is the plain encoder
    assert not hasattr(encoder, "classifier")
    # inference knows the kind from the checkpoint, even with a cross-encoder config
    scores = predictions(project, "--saved_model", "t", "data.test_path=data/dev.csv")
    out = capsys.readouterr().out
    assert "test pearson" in out
    assert np.isfinite(scores).all() and (scores >= -5.0).all() and (scores <= 5.0).all()
    # a bi-encoder is symmetric by construction
    symmetric = predictions(project, "--saved_model", "t", "inference.symmetric=true")
    np.testing.assert_allclose(symmetric, scores, atol=1e-5)
    # its resume bundle resumes
    assert (
        train.main(["--config", "t", *args[:-2], "training.epochs=3", "training.learning_rate=1e-3", "--resume"]) == 0
    )


@pytest.mark.e2e
def test_bi_encoder_rejects_cross_encoder_options(project, capsys):
    assert (
        train.main(["--config", "t", "model.kind=bi_encoder", "training.loss=bce", "model.output_activation=sigmoid"])
        == 2
    )
    assert "bi-encoder regresses the cosine" in capsys.readouterr().err


@pytest.mark.e2e
def test_k_fold_partitions_trains_scores_out_of_fold_and_resumes(project, capsys):
    import json

    args = ["--config", "t", "run_name=kf", "training.epochs=1", "--folds", "3"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    folder = project / "saved_model" / "kf-folds"
    pooled = pd.concat([pd.read_csv(project / "data" / n) for n in ("train.csv", "dev.csv")])
    held_out = [pd.read_csv(folder / f"fold{k}_dev.csv") for k in (1, 2, 3)]
    # the held-out parts partition train+dev; each fold trains on exactly the rest
    assert sorted(pd.concat(held_out)["id"]) == sorted(pooled["id"])
    for k, part in enumerate(held_out, start=1):
        trained = pd.read_csv(folder / f"fold{k}_train.csv")
        assert not set(trained["id"]) & set(part["id"]) and len(trained) + len(part) == len(pooled)
        assert (project / "saved_model" / f"kf-fold{k}" / "best").is_dir()
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["folds"]) == 3 and np.isfinite(summary["out_of_fold_pearson"])
    assert "--saved_model kf-fold1 kf-fold2 kf-fold3" in out

    # a fold's out-of-fold predictions are its best model's, as inference.py gives them
    fold1 = json.loads((folder / "fold1_predictions.json").read_text())["predictions"]
    part = held_out[0].rename(columns={"label": "score"})
    part.to_csv(project / "data" / "fold1_in.csv", index=False)
    part[["id"]].assign(target=0.0).to_csv(project / "data" / "fold1_template.csv", index=False)
    direct = predictions(
        project,
        "--saved_model",
        "kf-fold1",
        "data.predict_path=data/fold1_in.csv",
        "data.submission_template=data/fold1_template.csv",
        "data.test_path=null",
    )
    np.testing.assert_allclose(direct, fold1, rtol=0, atol=1e-5)

    # again without --resume: refused with the way out; with --resume: nothing retrained, same score
    assert train.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert train.main([*args, "--resume"]) == 0
    assert "done earlier" in capsys.readouterr().out
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert train.main(["--config", "t", "--folds", "1"]) == 2


@pytest.mark.e2e
def test_mapping_config_override_reaches_the_model(project):
    """A mapping-valued model.config_overrides (the frozen config holds it as a Box) is a plain dict
    in the model's config.json."""
    assert train.main(["--config", "t", "training.epochs=1", "model.config_overrides={id2label: {0: score}}"]) == 0
    saved = json.loads((project / "saved_model" / "t" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "score"}

"""A default never reinterprets someone else's checkpoint.

A regression model trained by plain transformers or tutorial code carries no record of how
plaintune maps outputs to scores; inference must give its raw outputs (what the tutorial code
did) unless the config says otherwise, while a plaintune checkpoint keeps its own mapping
whatever the inference config says.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train

# each inference replaces the last one's submission (output/sub.csv), written for another model
RAW = ["inference.clip=null", "inference.round=null", "--overwrite"]


def raw_outputs(model_dir, path="data/test.csv") -> np.ndarray:
    """The tutorial way: transformers alone, one pair at a time, the logit as the score."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    frame = pd.read_csv(path)
    with torch.no_grad():
        return np.array(
            [
                float(model(**tokenizer(a, b, truncation=True, max_length=48, return_tensors="pt")).logits)
                for a, b in zip(frame.sentence_1, frame.sentence_2)
            ]
        )


@pytest.fixture
def foreign(project, tiny_model_dir):
    """The tiny regression model with a trained-looking head (bias far from plaintune's init), saved
    the ways other code saves it."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.classifier.bias.fill_(2.5)  # raw scores around 2.5: a sigmoid would squash them to ~4.6
    out = project / "foreign"
    model.save_pretrained(out / "hf")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "hf")
    state = model.state_dict()
    torch.save(state, out / "state_dict.pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.save(
        {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(), "epoch": 2, "loss": 0.3},
        out / "tutorial_bundle.pt",
    )
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "epoch": 1,
            "global_step": 10,
            "pytorch-lightning_version": "2.4.0",
        },
        out / "lightning.ckpt",
    )
    return out


def submission(project) -> np.ndarray:
    return pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["hf", "state_dict.pt", "tutorial_bundle.pt", "lightning.ckpt"])
def test_foreign_checkpoint_predicts_its_raw_outputs(foreign, project, name, capsys):
    expected = raw_outputs(foreign / "hf")
    assert inference.main(["--config", "t", "--saved_model", str(foreign / name), *RAW]) == 0
    np.testing.assert_allclose(submission(project), expected, atol=1e-5)
    out = capsys.readouterr().out
    assert "output mapping: none (the checkpoint has no plaintune record" in out


@pytest.mark.e2e
def test_foreign_checkpoint_with_an_explicit_mapping(foreign, project, capsys):
    expected = raw_outputs(foreign / "hf")
    assert (
        inference.main(["--config", "t", "--saved_model", str(foreign / "hf"), *RAW, "model.output_activation=sigmoid"])
        == 0
    )
    np.testing.assert_allclose(submission(project), 5.0 / (1.0 + np.exp(-expected)), atol=1e-5)
    assert "output mapping: sigmoid (model.output_activation=sigmoid in the config)" in capsys.readouterr().out


@pytest.mark.e2e
def test_training_only_keys_never_block_inference(foreign, project):
    """loss bce with activation none is a training conflict; inference does not read the loss."""
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                str(foreign / "hf"),
                *RAW,
                "model.output_activation=none",
                "training.loss=bce",
                "training.optimizer={name: NoSuchOptimizer}",
            ]
        )
        == 0
    )


@pytest.mark.e2e
@pytest.mark.parametrize("said", ["none", "sigmoid", "auto"])
def test_plaintune_checkpoint_keeps_its_mapping_whatever_the_config_says(project, said):
    assert train.main(["--config", "t", "training.epochs=1", "model.output_activation=sigmoid"]) == 0
    best = project / "saved_model" / "t" / "best"
    assert inference.main(["--config", "t", "--saved_model", "t", *RAW]) == 0
    reference = submission(project)
    assert (reference > 0).all() and (reference < 5).all()
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                str(best),
                *RAW,
                f"model.output_activation={said}",
                "data.label_range=[0, 10]",
            ]
        )
        == 0
    )
    np.testing.assert_allclose(submission(project), reference, atol=1e-6)
    # the resume bundle is plaintune's too: same mapping from last.pt
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                str(project / "saved_model" / "t" / "last.pt"),
                *RAW,
                f"model.output_activation={said}",
            ]
        )
        == 0
    )
    assert np.corrcoef(submission(project), reference)[0, 1] > 0.99  # last.pt may be a later step than best/
    assert (submission(project) > 0).all() and (submission(project) < 5).all()


def resolved(project, run="t") -> dict:
    """The run's config as it ran: config.yaml keeps the user's auto, last.pt what it resolved to."""
    import yaml

    from plaintune.training.derived import effective

    written = yaml.safe_load((project / "saved_model" / run / "config.yaml").read_text())
    bundle = torch.load(project / "saved_model" / run / "last.pt", weights_only=True)
    assert bundle["config"] == written
    return effective(written, bundle["resolved"])


@pytest.mark.e2e
def test_warm_start_from_a_foreign_head_keeps_it_raw(foreign, project, capsys):
    assert (
        train.main(
            ["--config", "t", "training.epochs=1", f"model.init_from={foreign / 'state_dict.pt'}", "training.loss=auto"]
        )
        == 0
    )
    assert "output mapping: none (the checkpoint has no plaintune record" in capsys.readouterr().out
    cfg = resolved(project)
    assert cfg["model"]["output_activation"] == "none" and cfg["training"]["loss"] == "mse"
    best = json.loads((project / "saved_model" / "t" / "best" / "config.json").read_text())
    assert best["plaintune_output"]["activation"] == "none"


@pytest.mark.e2e
def test_warm_start_with_a_fresh_head_gets_the_sigmoid(foreign, project, capsys):
    """The base model comes from elsewhere, the head starts fresh: plaintune's default applies."""
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=1",
                "run_name=fresh",
                f"model.init_from={foreign / 'state_dict.pt'}",
                "model.allow_missing=['classifier.*']",
                "model.allow_unexpected=['old_head.*']",
                "model.key_rules=[['^classifier', 'old_head']]",
                "training.loss=auto",
            ]
        )
        == 0
    )
    assert "output mapping: sigmoid (a fresh head" in capsys.readouterr().out
    cfg = resolved(project, "fresh")
    assert cfg["model"]["output_activation"] == "sigmoid" and cfg["training"]["loss"] == "bce"


@pytest.mark.e2e
def test_bce_on_a_foreign_head_is_a_clear_error(foreign, project, capsys):
    code = train.main(["--config", "t", "training.epochs=1", f"model.init_from={foreign / 'hf'}", "training.loss=bce"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.loss: bce needs a sigmoid head, but the output mapping is none" in err[0]


@pytest.mark.e2e
def test_resuming_a_tutorial_bundle_keeps_its_raw_head(foreign, project, capsys):
    assert (
        train.main(
            [
                "--config",
                "t",
                "training.epochs=3",
                "training.loss=auto",
                "--resume",
                str(foreign / "tutorial_bundle.pt"),
            ]
        )
        == 0
    )
    assert "output mapping: none (the checkpoint has no plaintune record" in capsys.readouterr().out
    assert resolved(project)["model"]["output_activation"] == "none"


@pytest.mark.e2e
def test_converting_a_plaintune_bundle_keeps_its_mapping(project):
    """convert writes a Hugging Face directory; a sigmoid run's last.pt must not become a 'foreign' raw model."""
    from plaintune.checkpoint.command import main as checkpoint_main

    assert train.main(["--config", "t", "training.epochs=1", "model.output_activation=sigmoid"]) == 0
    last = project / "saved_model" / "t" / "last.pt"
    assert inference.main(["--config", "t", "--saved_model", str(last), *RAW]) == 0
    reference = submission(project)
    assert checkpoint_main(["convert", str(last), str(project / "converted"), "--config", "t"]) == 0
    config = json.loads((project / "converted" / "config.json").read_text())
    assert config["plaintune_output"]["activation"] == "sigmoid"
    assert inference.main(["--config", "t", "--saved_model", str(project / "converted"), *RAW]) == 0
    np.testing.assert_allclose(submission(project), reference, atol=1e-5)


@pytest.mark.e2e
def test_overflowing_predictions_are_an_error_not_a_clipped_score(foreign, project, capsys):
    """Finite weights whose outputs overflow: clipping would have turned inf into 5.0 silently."""
    state = torch.load(foreign / "state_dict.pt", weights_only=True)
    state["bert.pooler.dense.weight"].zero_()
    state["bert.pooler.dense.bias"].fill_(10.0)  # pooled features all tanh(10) ~ 1
    state["classifier.weight"] = torch.full_like(state["classifier.weight"], 3e38)  # 32 x 3e38 overflows
    torch.save(state, foreign / "overflow.pt")
    capsys.readouterr()
    assert inference.main(["--config", "t", "--saved_model", str(foreign / "overflow.pt")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "predictions are not finite" in err[0]
    assert not (project / "output").exists()


@pytest.mark.e2e
def test_the_weight_file_of_a_plaintune_directory_keeps_its_mapping(project, foreign, capsys):
    """best/model.safetensors given alone is still plaintune's; a foreign file stays foreign even when
    model.name is a plaintune directory (model.name's record says nothing about other weights)."""
    assert train.main(["--config", "t", "training.epochs=1", "model.output_activation=sigmoid"]) == 0
    best = project / "saved_model" / "t" / "best"
    assert inference.main(["--config", "t", "--saved_model", str(best), *RAW]) == 0
    reference = submission(project)
    assert inference.main(["--config", "t", "--saved_model", str(best / "model.safetensors"), *RAW]) == 0
    np.testing.assert_allclose(submission(project), reference, atol=1e-6)
    capsys.readouterr()
    assert (
        inference.main(["--config", "t", "--saved_model", str(foreign / "state_dict.pt"), *RAW, f"model.name={best}"])
        == 0
    )
    assert "output mapping: none (the checkpoint has no plaintune record" in capsys.readouterr().out
    np.testing.assert_allclose(submission(project), raw_outputs(foreign / "hf"), atol=1e-5)


@pytest.mark.e2e
def test_nonsense_in_training_only_keys_does_not_block_inference(foreign, project):
    assert (
        inference.main(
            [
                "--config",
                "t",
                "--saved_model",
                str(foreign / "hf"),
                "training.epochs=0",
                "training.learning_rate=-1",
                "checkpoint.keep_last=0",
            ]
        )
        == 0
    )
    # a key inference reads still counts
    assert inference.main(["--config", "t", "--saved_model", str(foreign / "hf"), "training.eval_batch_size=0"]) == 2


@pytest.mark.e2e
def test_a_bi_encoder_record_never_maps_a_cross_encoder_head(project, capsys):
    """A bi-encoder's best/ as the base of a cross-encoder: the head is fresh, the kind is what was built."""
    assert (
        train.main(["--config", "t", "training.epochs=1", "run_name=bi", "model.kind=bi_encoder", "training.loss=mse"])
        == 0
    )
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=1", "run_name=ce", "model.name=saved_model/bi/best"]) == 0
    assert "output mapping: sigmoid (a fresh head" in capsys.readouterr().out
    record = json.loads((project / "saved_model" / "ce" / "best" / "config.json").read_text())["plaintune_output"]
    assert record["kind"] == "cross_encoder" and record["activation"] == "sigmoid"
    assert inference.main(["--config", "t", "--saved_model", "ce"]) == 0

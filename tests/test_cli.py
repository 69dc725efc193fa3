"""End to end through the real entry points: train -> best/ -> inference -> submission."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train
from conftest import base_config, write_config


def run_train(*args: str) -> int:
    return train.main(["--config", "t", *args])


@pytest.mark.e2e
def test_train_then_inference(project, capsys):
    assert run_train() == 0
    run = project / "saved_model" / "t"
    for name in (
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "best/config.json",
        "best/model.safetensors",
        "best/tokenizer.json",
        "best/plaintune_state.json",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    out = capsys.readouterr().out
    assert "next: python inference.py --config t --saved_model t" in out

    # best/ is a plain Hugging Face directory that loads offline.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "best", local_files_only=True)
    AutoTokenizer.from_pretrained(run / "best", local_files_only=True)
    assert model.config.num_labels == 1

    # The bundle keeps the seed layout and loads with weights_only=True.
    bundle = torch.load(run / "last.pt", weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "epoch", "loss", "format_version"} <= set(bundle)
    assert bundle["epoch"] == 2  # completed epochs

    # metrics.jsonl: one eval line per epoch, Pearson over the whole dev set.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    meta = json.loads((run / "best" / "plaintune_state.json").read_text())
    assert meta["value"] == pytest.approx(max(r["pearson"] for r in evals))

    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0
    submission = pd.read_csv(project / "output" / "sub.csv")
    template = pd.read_csv(project / "data" / "sample_submission.csv")
    assert submission["id"].tolist() == template["id"].tolist()
    assert list(submission.columns) == list(template.columns)
    # the submission is the model's own predictions, clipped and rounded as configured (not just in range)
    import plaintune

    raw = plaintune.predict("t", "t")["target"].to_numpy()
    np.testing.assert_allclose(submission["target"].to_numpy(), np.round(np.clip(raw, 0.0, 5.0), 1), atol=1e-9)


@pytest.mark.e2e
def test_inference_accepts_every_saved_model_form(project):
    assert run_train("training.epochs=1") == 0
    run = project / "saved_model" / "t"
    outputs = {}
    for form in ("t", str(run), str(run / "best"), str(run / "last.pt")):
        assert inference.main(["--config", "t", "--saved_model", form, "inference.round=null"]) == 0, form
        outputs[form] = pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()
    # best (epoch 1) and last (after epoch 1) are the same weights here
    for form, values in outputs.items():
        np.testing.assert_allclose(values, outputs["t"], rtol=0, atol=1e-6, err_msg=form)
    shutil.copy(run / "last.pt", project / "saved_model" / "mine.pt")
    assert inference.main(["--config", "t", "--saved_model", "mine", "--overwrite"]) == 0  # another model


def test_inference_restores_input_order(project, tiny_model_dir):
    """Sorted-by-length batching must not reorder predictions: compare with one-by-one forwards."""
    from plaintune.config.load import load_config
    from plaintune.data.batching import eval_loader
    from plaintune.data.tables import read_pairs
    from plaintune.data.tokenized import PadCollator, PairDataset
    from plaintune.inference.predicting import load_model_for_inference
    from plaintune.model.outputs import model_outputs

    cfg = load_config("t")
    model, tokenizer, _ = load_model_for_inference(cfg, tiny_model_dir)
    table = read_pairs("data/test.csv", "k", cfg.data.columns, labelled=False)
    dataset = PairDataset(table, tokenizer, 48)
    assert len(set(dataset.lengths.tolist())) > 3  # lengths vary, so sorting really reorders
    loader = eval_loader(dataset, 7, 1)
    assert [i for batch in loader.batch_sampler for i in batch] != list(range(len(dataset)))
    batched = model_outputs(model, loader, torch.device("cpu"))
    collate = PadCollator(dataset.pad_id)
    with torch.inference_mode():
        single = []
        for i in range(len(dataset)):
            batch = collate([dataset[i]])
            batch.pop("index")
            single.append(float(model(**batch).logits[0, 0]))
    np.testing.assert_allclose(batched, np.array(single), atol=1e-5)


@pytest.mark.e2e
def test_hub_model_offline_is_one_clear_line(project, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = train.main(["--config", "t", "model.name=klue/roberta-small"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: model.name:")
    assert "offline" in err[0] and "local directory" in err[0]
    assert not (project / "saved_model" / "t").exists()  # nothing written


@pytest.mark.e2e
def test_shipped_roberta_config_offline(project, capsys, monkeypatch):
    """The leaderboard user's command, with the competition files in data/ but no hub."""
    from conftest import REPO

    shutil.copy(REPO / "configs" / "roberta_small.yaml", project / "configs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert train.main(["--config", "roberta_small"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "klue/roberta-small" in err and "offline" in err
    assert "Traceback" not in err


@pytest.mark.e2e
def test_missing_data_file_is_exit_2(project, capsys):
    assert run_train("data.train_path=data/nope.csv") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "data/nope.csv" in err and "Traceback" not in err


@pytest.mark.e2e
def test_existing_run_is_not_clobbered(project, capsys):
    assert run_train("training.epochs=1") == 0
    before = (project / "saved_model" / "t" / "last.pt").read_bytes()
    assert run_train("training.epochs=1") == 2
    assert "--resume" in capsys.readouterr().err
    assert (project / "saved_model" / "t" / "last.pt").read_bytes() == before
    assert run_train("training.epochs=1", "--overwrite") == 0


@pytest.mark.e2e
def test_unknown_saved_model_lists_runs(project, capsys):
    assert run_train("training.epochs=1") == 0
    assert inference.main(["--config", "t", "--saved_model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "runs under saved_model/: t" in err
    assert not (project / "output" / "sub.csv").exists()


@pytest.mark.e2e
def test_template_mismatch_writes_nothing(project, capsys):
    assert run_train("training.epochs=1") == 0
    template = project / "data" / "sample_submission.csv"
    lines = template.read_text().splitlines()
    template.write_text("\n".join(lines[:1] + ["unknown-id,0.0"] + lines[2:]) + "\n")
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 2
    err = capsys.readouterr().err
    assert "unknown-id" in err and "line 2" in err
    assert not (project / "output" / "sub.csv").exists()


@pytest.mark.e2e
def test_classification_head(project, tiny_model_dir):
    """num_labels > 1 with CrossEntropyLoss trains on the binary label and writes class ids."""
    cfg = base_config(tiny_model_dir)
    cfg["model"]["num_labels"] = 2
    cfg["data"]["columns"] = {"label": "binary-label"}
    cfg["training"]["loss"] = "CrossEntropyLoss"
    write_config(project, cfg, "cls")
    assert train.main(["--config", "cls", "training.epochs=1", "model.allow_missing=[classifier.*]"]) == 0
    meta = json.loads((project / "saved_model" / "t" / "best" / "plaintune_state.json").read_text())
    assert meta["metric"] == "accuracy" and 0 <= meta["value"] <= 1
    assert inference.main(["--config", "cls", "--saved_model", "t"]) == 0
    assert set(pd.read_csv(project / "output" / "sub.csv")["target"]) <= {0, 1}


@pytest.mark.e2e
def test_nan_metric_never_counts_as_best(project, capsys, monkeypatch):
    """A run whose every validation scores NaN (a model predicting a constant) keeps no best/, says
    so, and still ends normally with its resumable last.pt."""
    from plaintune.model.objective import Objective
    from plaintune.recipe.metrics import is_better

    assert is_better(0.1, None) and not is_better(float("nan"), None)
    assert not is_better(float("nan"), 0.2) and not is_better(float("inf"), 0.2)
    assert not is_better(float("-inf"), None) and is_better(0.3, 0.2) and not is_better(0.2, 0.2)

    # a model that predicts one constant score: Pearson and Spearman are undefined (NaN)
    monkeypatch.setattr(Objective, "predictions", lambda self, logits: np.full(len(logits), 2.5))
    assert run_train() == 0
    run = project / "saved_model" / "t"
    assert (run / "last.pt").is_file() and not (run / "best").exists()
    out = capsys.readouterr().out
    assert "no validation gave a finite dev pearson (2 validations" in out and "best model:  (none saved)" in out
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [1, 2]


@pytest.mark.parametrize(
    "command, argv, expect",
    [
        ("train", ["--config", "t", "--resume", "--overwrite"], "give one of them"),
        ("train", ["--config", "t", "--bogus"], "unrecognized argument: --bogus"),
        ("inference", ["--config", "t", "--saved_model", "t", "--weights", "x"], "--weights must be numbers"),
        ("checkpoint", ["inspect"], "required"),
        ("checkpoint", ["inspect", "x.pt", "--config", "t", "--bogus"], "unrecognized argument: --bogus"),
    ],
)
def test_usage_mistakes_are_one_error_line(project, capsys, command, argv, expect):
    from plaintune.checkpoint import command as checkpoint

    main = {"train": train.main, "inference": inference.main, "checkpoint": checkpoint.main}[command]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err


@pytest.mark.e2e
def test_checkpoint_overrides_may_follow_config(project, capsys):
    from plaintune.checkpoint import command as checkpoint

    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    capsys.readouterr()
    assert checkpoint.main(["inspect", "saved_model/t/last.pt", "--config", "t", "model.max_length=32"]) == 0
    assert "unrecognized" not in capsys.readouterr().err

"""best/ loads in its own ecosystem and gives plaintune's predictions there: SentenceTransformer for a
bi-encoder, CrossEncoder and AutoModelForSequenceClassification for a cross-encoder (the formulas of
docs/exports.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train
from plaintune.rundir.layout import find_best_dir

pytest.importorskip("sentence_transformers")


def plaintune_scores(project) -> np.ndarray:
    assert inference.main(["--config", "t", "--saved_model", "t", "inference.round=null", "inference.clip=null"]) == 0
    return pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()


def pairs_of(project) -> list[tuple[str, str]]:
    frame = pd.read_csv(project / "data" / "test.csv")
    return list(zip(frame["sentence_1"], frame["sentence_2"]))


@pytest.mark.e2e
def test_bi_encoder_best_is_a_sentence_transformers_model(project):
    from sentence_transformers import SentenceTransformer

    assert (
        train.main(["--config", "t", "model.kind=bi_encoder", "training.epochs=1", "training.learning_rate=1e-3"]) == 0
    )
    best = project / "saved_model" / "t" / "best"
    modules = json.loads((best / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules][:2] == ["Transformer", "Pooling"]
    # In a fresh process, as a user loads it: no load report of missing / newly initialised tensors
    # (a pooler, which mean pooling never uses, reads as a broken export).
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sentence_transformers import SentenceTransformer; "
            "SentenceTransformer(sys.argv[1], device='cpu'); print('loaded')",
            str(best),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    report = fresh.stdout + fresh.stderr
    assert "loaded" in fresh.stdout and "MISSING" not in report and "newly initialized" not in report, report
    model = SentenceTransformer(str(best), device="cpu")
    assert model.max_seq_length == 48  # the trained model.max_length, not 512
    pairs = pairs_of(project)
    first = model.encode([a for a, _ in pairs], convert_to_tensor=True)
    second = model.encode([b for _, b in pairs], convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(first, second).numpy().astype(np.float64)
    low, high = 0.0, 5.0  # data.label_range; docs/exports.md: score = low + (high - low) * cosine
    np.testing.assert_allclose(low + (high - low) * cosine, plaintune_scores(project), atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("activation", ["sigmoid", "none"])
def test_cross_encoder_best_loads_with_cross_encoder_and_transformers(project, activation):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert train.main(["--config", "t", "training.epochs=1", f"model.output_activation={activation}"]) == 0
    best = find_best_dir(project / "saved_model" / "t")
    expected = plaintune_scores(project)
    pairs = pairs_of(project)
    low, span = 0.0, 5.0

    # sentence-transformers: its activation comes from config.json
    ce_scores = CrossEncoder(str(best), device="cpu", max_length=48).predict(pairs).astype(np.float64)
    mapped = low + span * ce_scores if activation == "sigmoid" else ce_scores
    np.testing.assert_allclose(mapped, expected, atol=1e-5)

    # plain transformers: the raw logit, then the recorded mapping (config.json plaintune_output)
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    tokenizer = AutoTokenizer.from_pretrained(best)
    record = model.config.plaintune_output
    assert record["activation"] == activation and (record["low"], record["high"]) == (0.0, 5.0)
    with torch.no_grad():
        batch = tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            padding=True,
            truncation=True,
            max_length=48,
            return_tensors="pt",
        )
        logits = model(**batch).logits[:, 0].double().numpy()
    raw = low + span / (1 + np.exp(-logits)) if activation == "sigmoid" else logits
    np.testing.assert_allclose(raw, expected, atol=1e-5)


@pytest.mark.e2e
def test_model_card_and_meta(project):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    best = project / "saved_model" / "t" / "best"
    card = (best / "README.md").read_text()
    assert "pearson" in card and "AutoModelForSequenceClassification" in card
    assert f"`{project / 'data' / 'train.csv'}`" in card  # absolute: the card travels with the model
    assert "1 epoch," in card and "1 epochs" not in card
    assert "trained under fp32" in card and "within 1e-5" in card and "bf16" in card
    meta = json.loads((best / "plaintune_state.json").read_text())
    assert {"pearson", "spearman", "loss"} <= set(meta["metrics"])
    assert find_best_dir(project / "saved_model" / "t") == best

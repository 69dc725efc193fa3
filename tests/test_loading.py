"""Load any checkpoint, never silently: every format and key mangling predicts like the original;
every bad checkpoint is one clear error."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import inference
import train
from conftest import base_config, write_config
from plaintune import checkpoint_cli
from plaintune.checkpoint import map_keys


def _mangle(state: dict, kind: str) -> dict:
    out = {}
    for key, value in state.items():
        if kind == "module":
            key = "module." + key
        elif kind == "orig_mod":
            key = "_orig_mod." + key
        elif kind == "module_orig_mod":
            key = "module._orig_mod." + key
        elif kind == "orig_mod_module":
            key = "_orig_mod.module." + key
        elif kind == "no_base_prefix":
            key = key.removeprefix("bert.")
        elif kind == "double_base_prefix":
            key = "bert." + key
        elif kind in ("gamma_beta", "module_gamma_beta"):
            if "LayerNorm" in key:
                key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
            if kind == "module_gamma_beta":
                key = "module." + key
        out[key] = value
    return out


@pytest.fixture(scope="module")
def formats(tmp_path_factory, tiny_model_dir):
    """The tiny model saved in every supported format and key mangling: name -> path."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("formats")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = {"hf_dir_safetensors": tiny_model_dir}

    legacy = root / "hf_legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    torch.save(state, legacy / "pytorch_model.bin")
    paths["hf_dir_pytorch_model_bin"] = legacy

    save_file(state, root / "weights.safetensors")
    paths["safetensors_file"] = root / "weights.safetensors"
    torch.save(state, root / "plain.pt")
    paths["state_dict_pt"] = root / "plain.pt"
    for kind, suffix in (("module", ".pth"), ("orig_mod", ".bin"), ("module_orig_mod", ".pt"),
                         ("orig_mod_module", ".pt"), ("no_base_prefix", ".pt"), ("double_base_prefix", ".pt"),
                         ("gamma_beta", ".pt"), ("module_gamma_beta", ".pt")):
        torch.save(_mangle(state, kind), root / f"{kind}{suffix}")
        paths[kind] = root / f"{kind}{suffix}"
    for key in ("model_state_dict", "state_dict", "model"):
        torch.save({key: state, "epoch": 3, "loss": 0.1}, root / f"bundle_{key}.pt")
        paths[f"bundle_{key}"] = root / f"bundle_{key}.pt"
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 2, "global_step": 10,
                "pytorch-lightning_version": "2.4.0"}, root / "lightning.ckpt")
    paths["lightning_ckpt"] = root / "lightning.ckpt"
    torch.save({"model_state_dict": _mangle(state, "module"), "optimizer_state_dict": {}, "epoch": 1},
               root / "ddp_bundle.pt")
    paths["ddp_seed_bundle"] = root / "ddp_bundle.pt"
    fp16 = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(fp16, root / "fp16.safetensors")
    paths["fp16_safetensors"] = root / "fp16.safetensors"
    return paths


def predictions(project, saved_model: str, *extra: str) -> np.ndarray:
    code = inference.main(["--config", "t", "--saved_model", saved_model, "inference.round=null",
                           "inference.clip=null", *extra])
    assert code == 0, saved_model
    return pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()


FORMAT_NAMES = ["hf_dir_safetensors", "hf_dir_pytorch_model_bin", "safetensors_file", "state_dict_pt", "module",
                "orig_mod", "module_orig_mod", "orig_mod_module", "no_base_prefix", "double_base_prefix",
                "gamma_beta", "module_gamma_beta", "bundle_model_state_dict", "bundle_state_dict", "bundle_model",
                "lightning_ckpt", "ddp_seed_bundle"]


def test_every_format_predicts_like_the_original(project, formats, tiny_model_dir, capsys):
    reference = predictions(project, str(tiny_model_dir))
    for name in FORMAT_NAMES:
        got = predictions(project, str(formats[name]))
        np.testing.assert_array_equal(got, reference, err_msg=name)
    out = capsys.readouterr().out
    assert "strip DDP 'module.'" in out and "strip torch.compile '_orig_mod.'" in out
    assert "add base prefix 'bert.'" in out and "LayerNorm gamma -> weight" in out
    assert "strip Lightning 'model.'" in out


def test_half_precision_weights_load(project, formats, tiny_model_dir):
    reference = predictions(project, str(tiny_model_dir))
    np.testing.assert_allclose(predictions(project, str(formats["fp16_safetensors"])), reference, atol=1e-2)


@pytest.mark.parametrize("name,fragment", [
    ("truncated.pt", "corrupt or truncated"),
    ("random.pt", "not a readable torch file"),
    ("empty.pt", "is empty (0 bytes)"),
    ("random.safetensors", "not a readable safetensors file"),
    ("other_architecture.pt", "with another shape"),
    ("no_head.pt", "missing from the checkpoint: classifier.bias, classifier.weight"),
    ("three_labels.pt", "classifier.weight (3, 32) vs model (1, 32)"),
    ("whole_model.pt", "--trust-checkpoint"),
    ("no_weights.pt", "without model weights"),
    ("missing.pt", "no such file"),
])
def test_bad_checkpoints_are_one_error_line(project, bad_checkpoints, capsys, name, fragment):
    code = inference.main(["--config", "t", "--saved_model", str(bad_checkpoints / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (project / "output" / "sub.csv").exists()


def test_trusted_pickle_loads(project, bad_checkpoints, tiny_model_dir):
    reference = predictions(project, str(tiny_model_dir))
    got = predictions(project, str(bad_checkpoints / "whole_model.pt"), "--trust-checkpoint")
    np.testing.assert_array_equal(got, reference)


def test_key_rules_are_applied_only_when_they_help():
    model_keys = {"bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.output.dense.weight", "classifier.weight"}
    state = {"module.embeddings.LayerNorm.gamma": 1, "module.encoder.layer.0.output.dense.weight": 2,
             "module.classifier.weight": 3}

    class Fake:
        base_model_prefix = "bert"

    mapped, rules = map_keys(state, model_keys, model=Fake())
    assert set(mapped) == model_keys
    assert rules[0] == "strip DDP 'module.'" and "LayerNorm gamma -> weight" in rules
    assert "add base prefix 'bert.'" in rules
    # a key that already matches is never renamed
    mapped, rules = map_keys({"classifier.weight": 1}, {"classifier.weight"}, model=Fake())
    assert mapped == {"classifier.weight": 1} and rules == []


def test_user_key_rules_from_config(project, formats, tiny_model_dir, tmp_path):
    state = torch.load(formats["state_dict_pt"], weights_only=True)
    torch.save({k.replace("encoder.layer", "enc.blocks"): v for k, v in state.items()}, tmp_path / "renamed.pt")
    code = inference.main(["--config", "t", "--saved_model", str(tmp_path / "renamed.pt")])
    assert code == 2
    reference = predictions(project, str(tiny_model_dir))
    got = predictions(project, str(tmp_path / "renamed.pt"), "model.key_rules=[['enc\\.blocks', 'encoder.layer']]")
    np.testing.assert_array_equal(got, reference)


def test_warm_start_into_a_changed_model(project, tiny_model_dir, capsys):
    """A 3-layer model initialised from the 2-layer checkpoint: old tensors bit-equal, the new layer fresh."""
    cfg = base_config(tiny_model_dir)
    cfg["run_name"] = "warm"
    cfg["model"].update({"from_scratch": True, "config_overrides": {"num_hidden_layers": 3},
                         "init_from": str(tiny_model_dir), "allow_missing": ["bert.encoder.layer.2.*"]})
    write_config(project, cfg, "warm")
    from plaintune.checkpoint import load_weights
    from plaintune.config import load_config
    from plaintune.factory import build_model
    from transformers import AutoModelForSequenceClassification

    loaded = load_config("warm")
    torch.manual_seed(123)
    model = build_model(loaded.model)
    fresh_before = model.bert.encoder.layer[2].output.dense.weight.clone()
    report = load_weights(model, tiny_model_dir, allow_missing=loaded.model.allow_missing)
    old = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).state_dict()
    new = model.state_dict()
    for key, tensor in old.items():
        assert torch.equal(new[key], tensor), key
    assert torch.equal(model.bert.encoder.layer[2].output.dense.weight, fresh_before)
    assert all(k.startswith("bert.encoder.layer.2.") for k in report.missing) and len(report.missing) == 16

    # Without the allow glob the same warm start is refused, naming the tensors and the fix.
    assert train.main(["--config", "warm", "model.allow_missing=[]"]) == 2
    err = capsys.readouterr().err
    assert "bert.encoder.layer.2." in err and "model.allow_missing" in err
    # With it, training runs and the full report lands in the run directory.
    assert train.main(["--config", "warm", "training.epochs=1"]) == 0
    text = (project / "saved_model" / "warm" / "load_report.txt").read_text()
    assert "missing (initialised fresh): 16" in text and "bert.encoder.layer.2.output.dense.weight" in text


def test_new_head_for_another_task(project, tiny_model_dir, capsys):
    """num_labels 1 -> 3: the head is reshaped only when allowed."""
    cfg = base_config(tiny_model_dir)
    cfg["model"]["num_labels"] = 3
    cfg["training"]["loss"] = "CrossEntropyLoss"
    cfg["data"]["columns"] = {"label": "binary-label"}
    write_config(project, cfg, "cls3")
    assert train.main(["--config", "cls3", "training.epochs=1"]) == 2
    assert "classifier" in capsys.readouterr().err
    assert train.main(["--config", "cls3", "training.epochs=1", "model.allow_missing=['classifier.*']"]) == 0


def test_freezing(project, capsys):
    assert train.main(["--config", "t", "training.epochs=1", "model.freeze=['bert.*']",
                       "model.unfreeze=['bert.pooler.*']"]) == 0
    out = capsys.readouterr().out
    assert "1,089 trainable parameters" in out  # pooler 32*32+32 + classifier 32+1
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    optimizer_params = sum(len(g["params"]) for g in bundle["optimizer_state_dict"]["param_groups"])
    assert optimizer_params == 4  # frozen parameters stay out of the optimizer
    assert train.main(["--config", "t", "--overwrite", "model.freeze=['nothing.*']"]) == 2
    assert "matches no parameter" in capsys.readouterr().err


def test_inspect_cli(project, formats, capsys):
    assert checkpoint_cli.main(["inspect", str(formats["module_gamma_beta"])]) == 0
    out = capsys.readouterr().out
    assert "format:     state dict" in out and "module. x" in out and "float32" in out
    assert checkpoint_cli.main(["inspect", str(formats["module_gamma_beta"]), "--config", "t"]) == 0
    out = capsys.readouterr().out
    assert "strip DDP 'module.'" in out and "loaded: 41" in out


def test_convert_cli_writes_a_clean_hf_dir(project, formats, tiny_model_dir, tmp_path):
    out_dir = tmp_path / "clean"
    assert checkpoint_cli.main(["convert", str(formats["lightning_ckpt"]), str(out_dir), "--config", "t"]) == 0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out_dir).num_labels == 1
    np.testing.assert_array_equal(predictions(project, str(out_dir)), predictions(project, str(tiny_model_dir)))

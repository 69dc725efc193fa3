"""Load any checkpoint, never silently: every format and key mangling predicts like the original;
every bad checkpoint is one clear error."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import inference
import train
from conftest import base_config, write_config
from plaintune.checkpoint import command as checkpoint
from plaintune.errors import UserError
from plaintune.model.loading import build_model, build_model_config, build_tokenizer
from plaintune.rundir.layout import resolve_saved_model
from plaintune.weights.formats import read_state_dict
from plaintune.weights.load import LoadRules, load_into, load_weights, map_keys


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
    for kind, suffix in (
        ("module", ".pth"),
        ("orig_mod", ".bin"),
        ("module_orig_mod", ".pt"),
        ("orig_mod_module", ".pt"),
        ("no_base_prefix", ".pt"),
        ("double_base_prefix", ".pt"),
        ("gamma_beta", ".pt"),
        ("module_gamma_beta", ".pt"),
    ):
        torch.save(_mangle(state, kind), root / f"{kind}{suffix}")
        paths[kind] = root / f"{kind}{suffix}"
    for key in ("model_state_dict", "state_dict", "model"):
        torch.save({key: state, "epoch": 3, "loss": 0.1}, root / f"bundle_{key}.pt")
        paths[f"bundle_{key}"] = root / f"bundle_{key}.pt"
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in state.items()},
            "epoch": 2,
            "global_step": 10,
            "pytorch-lightning_version": "2.4.0",
        },
        root / "lightning.ckpt",
    )
    paths["lightning_ckpt"] = root / "lightning.ckpt"
    torch.save(
        {"model_state_dict": _mangle(state, "module"), "optimizer_state_dict": {}, "epoch": 1}, root / "ddp_bundle.pt"
    )
    paths["ddp_seed_bundle"] = root / "ddp_bundle.pt"
    fp16 = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(fp16, root / "fp16.safetensors")
    paths["fp16_safetensors"] = root / "fp16.safetensors"
    return paths


def predictions(project, saved_model: str, *extra: str) -> np.ndarray:
    code = inference.main(
        [
            "--config",
            "t",
            "--saved_model",
            saved_model,
            "inference.round=null",
            "inference.clip=null",
            "--overwrite",
            *extra,
        ]
    )
    assert code == 0, saved_model
    return pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()


FORMAT_NAMES = [
    "hf_dir_safetensors",
    "hf_dir_pytorch_model_bin",
    "safetensors_file",
    "state_dict_pt",
    "module",
    "orig_mod",
    "module_orig_mod",
    "orig_mod_module",
    "no_base_prefix",
    "double_base_prefix",
    "gamma_beta",
    "module_gamma_beta",
    "bundle_model_state_dict",
    "bundle_state_dict",
    "bundle_model",
    "lightning_ckpt",
    "ddp_seed_bundle",
]


@pytest.mark.e2e
def test_every_format_predicts_like_the_original(project, formats, tiny_model_dir, capsys):
    reference = predictions(project, str(tiny_model_dir))
    for name in FORMAT_NAMES:
        got = predictions(project, str(formats[name]))
        np.testing.assert_array_equal(got, reference, err_msg=name)
    out = capsys.readouterr().out
    assert "strip DDP 'module.'" in out and "strip torch.compile '_orig_mod.'" in out
    assert "add base prefix 'bert.'" in out and "LayerNorm gamma -> weight" in out
    assert "strip Lightning 'model.'" in out


@pytest.mark.e2e
def test_half_precision_weights_load(project, formats, tiny_model_dir):
    reference = predictions(project, str(tiny_model_dir))
    np.testing.assert_allclose(predictions(project, str(formats["fp16_safetensors"])), reference, atol=1e-2)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name,fragment",
    [
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
    ],
)
def test_bad_checkpoints_are_one_error_line(project, bad_checkpoints, capsys, name, fragment):
    code = inference.main(["--config", "t", "--saved_model", str(bad_checkpoints / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (project / "output" / "sub.csv").exists()


@pytest.mark.e2e
def test_trusted_pickle_loads(project, bad_checkpoints, tiny_model_dir):
    reference = predictions(project, str(tiny_model_dir))
    got = predictions(project, str(bad_checkpoints / "whole_model.pt"), "--trust-checkpoint")
    np.testing.assert_array_equal(got, reference)


def test_key_rules_are_applied_only_when_they_help():
    model_keys = {"bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.output.dense.weight", "classifier.weight"}
    state = {
        "module.embeddings.LayerNorm.gamma": 1,
        "module.encoder.layer.0.output.dense.weight": 2,
        "module.classifier.weight": 3,
    }

    class Fake:
        base_model_prefix = "bert"

    mapped, rules = map_keys(state, model_keys, model=Fake())
    assert set(mapped) == model_keys
    assert rules[0] == "strip DDP 'module.'" and "LayerNorm gamma -> weight" in rules
    assert "add base prefix 'bert.'" in rules
    # a key that already matches is never renamed
    mapped, rules = map_keys({"classifier.weight": 1}, {"classifier.weight"}, model=Fake())
    assert mapped == {"classifier.weight": 1} and rules == []


@pytest.mark.e2e
def test_user_key_rules_from_config(project, formats, tiny_model_dir, tmp_path):
    state = torch.load(formats["state_dict_pt"], weights_only=True)
    torch.save({k.replace("encoder.layer", "enc.blocks"): v for k, v in state.items()}, tmp_path / "renamed.pt")
    code = inference.main(["--config", "t", "--saved_model", str(tmp_path / "renamed.pt")])
    assert code == 2
    reference = predictions(project, str(tiny_model_dir))
    got = predictions(project, str(tmp_path / "renamed.pt"), "model.key_rules=[['enc\\.blocks', 'encoder.layer']]")
    np.testing.assert_array_equal(got, reference)


@pytest.mark.e2e
def test_warm_start_into_a_changed_model(project, tiny_model_dir, capsys):
    """A 3-layer model initialised from the 2-layer checkpoint: old tensors bit-equal, the new layer fresh."""
    cfg = base_config(tiny_model_dir)
    cfg["run_name"] = "warm"
    cfg["model"].update(
        {
            "from_scratch": True,
            "config_overrides": {"num_hidden_layers": 3},
            "init_from": str(tiny_model_dir),
            "allow_missing": ["bert.encoder.layer.2.*"],
        }
    )
    write_config(project, cfg, "warm")
    from transformers import AutoModelForSequenceClassification

    from plaintune.config.load import load_config
    from plaintune.model.loading import build_model
    from plaintune.weights.load import LoadRules, load_weights

    loaded = load_config("warm")
    torch.manual_seed(123)
    model = build_model(loaded.model)
    fresh_before = model.bert.encoder.layer[2].output.dense.weight.clone()
    report = load_weights(model, tiny_model_dir, LoadRules(allow_missing=loaded.model.allow_missing))
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_freezing(project, capsys):
    assert (
        train.main(
            ["--config", "t", "training.epochs=1", "model.freeze=['bert.*']", "model.unfreeze=['bert.pooler.*']"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1,089 trainable parameters" in out  # pooler 32*32+32 + classifier 32+1
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    optimizer_params = sum(len(g["params"]) for g in bundle["optimizer_state_dict"]["param_groups"])
    assert optimizer_params == 4  # frozen parameters stay out of the optimizer
    assert train.main(["--config", "t", "--overwrite", "model.freeze=['nothing.*']"]) == 2
    assert "matches no parameter" in capsys.readouterr().err


@pytest.mark.e2e
def test_inspect_cli(project, formats, capsys):
    assert checkpoint.main(["inspect", str(formats["module_gamma_beta"])]) == 0
    out = capsys.readouterr().out
    assert "format:     state dict" in out and "module. x" in out and "float32" in out
    assert checkpoint.main(["inspect", str(formats["module_gamma_beta"]), "--config", "t"]) == 0
    out = capsys.readouterr().out
    assert "strip DDP 'module.'" in out and "loaded: 41" in out


@pytest.mark.e2e
def test_convert_cli_writes_a_clean_hf_dir(project, formats, tiny_model_dir, tmp_path):
    out_dir = tmp_path / "clean"
    assert checkpoint.main(["convert", str(formats["lightning_ckpt"]), str(out_dir), "--config", "t"]) == 0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out_dir).num_labels == 1
    np.testing.assert_array_equal(predictions(project, str(out_dir)), predictions(project, str(tiny_model_dir)))


# ------------------------------------------------------------ damaged metadata, unreadable files


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("hf_config_brace", "config.json' is not valid JSON (Expecting property name"),
        ("hf_config_array", "config.json' is not valid JSON (it holds an array, not a JSON object)"),
        ("hf_config_no_model_type", "config.json' has no model_type"),
        ("hf_output_string", "'plaintune_output' is malformed ('sigmoid')"),
        ("hf_output_low_above_high", "'plaintune_output' is malformed"),
        ("hf_index_empty", "model.safetensors.index.json' is empty or malformed"),
        ("hf_index_empty_weight_map", "model.safetensors.index.json' is empty or malformed"),
        ("hf_index_missing_shard", "shard(s) that do not exist: model-00001-of-00002.safetensors"),
        ("hf_tokenizer_truncated", "tokenizer.json' is not a valid tokenizer file (invalid JSON"),
    ],
)
def test_damaged_directory_metadata_is_named_on_every_load_path(bad_checkpoints, name, fragment):
    """read_state_dict serves init_from, inspect and convert: the same checks as --saved_model."""
    with pytest.raises(UserError) as caught:
        read_state_dict(bad_checkpoints / name)
    assert fragment in str(caught.value) and name in str(caught.value)


def test_damaged_model_name_directory_is_not_a_hub_problem(bad_checkpoints, tiny_model_dir, tmp_path):
    """A local directory's failure names its file; "cannot fetch from the hub" is for hub ids."""
    for name, fragment in (
        ("hf_config_brace", "config.json' is not valid JSON"),
        ("hf_tokenizer_truncated", "tokenizer.json' is not a valid tokenizer file"),
        ("hf_tokenizer_unknown_model", "tokenizer.json' is not a valid tokenizer file"),
    ):
        with pytest.raises(UserError) as caught:
            build_tokenizer({"name": str(bad_checkpoints / name)})
        assert fragment in str(caught.value) and "hub" not in str(caught.value), caught.value
    # Weights missing altogether: transformers' reason, for the directory, not a download hint.
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(UserError) as caught:
        build_model({"name": str(tmp_path), "num_labels": 1, "max_length": 48}, pretrained=True)
    assert f"cannot load the model in '{tmp_path}'" in str(caught.value) and "hub" not in str(caught.value)


def _permission_denied(target: str):
    def fail(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", target)

    return fail


def test_unreadable_files_say_permission_denied(project, bad_checkpoints, tiny_model_dir, monkeypatch):
    """As root nothing is unreadable, so the failing reads are simulated where they happen."""
    import builtins
    from pathlib import Path

    from plaintune.data import tables as data
    from plaintune.weights import formats as checkpoint_formats

    real_open, real_read_text = builtins.open, Path.read_text
    weights = bad_checkpoints / "good.pt"
    monkeypatch.setattr(
        checkpoint_formats,
        "open",
        lambda file, *a, **k: (
            _permission_denied(str(file))() if str(file) == str(weights) else real_open(file, *a, **k)
        ),
        raising=False,
    )
    with pytest.raises(UserError, match=f"cannot read '{weights}': permission denied; make it readable"):
        read_state_dict(weights)

    config = tiny_model_dir / "config.json"
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: _permission_denied(str(self))() if self == config else real_read_text(self, *a, **k),
    )
    with pytest.raises(UserError, match="permission denied") as caught:
        resolve_saved_model(str(tiny_model_dir))
    assert f"'{config}'" in str(caught.value) and "no such file" not in str(caught.value)
    monkeypatch.undo()

    from transformers import AutoTokenizer

    tokenizer_file = str(tiny_model_dir / "tokenizer.json")
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", _permission_denied(tokenizer_file))
    with pytest.raises(UserError, match=f"cannot read '{tokenizer_file}': permission denied"):
        build_tokenizer({"name": str(tiny_model_dir)})

    csv_file = str(project / "data" / "train.csv")
    monkeypatch.setattr(
        data,
        "open",
        lambda file, *a, **k: _permission_denied(str(file))() if str(file) == csv_file else real_open(file, *a, **k),
        raising=False,
    )
    with pytest.raises(UserError, match=f"data.train_path: '{csv_file}': permission denied"):
        data.read_csv_checked(csv_file, "data.train_path")


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_real_permission_bits(project, bad_checkpoints, tmp_path, capsys):
    locked = tmp_path / "locked.pt"
    locked.write_bytes((bad_checkpoints / "good.pt").read_bytes())
    locked.chmod(0)
    folder = tmp_path / "closed"
    folder.mkdir()
    (folder / "w.pt").write_bytes(b"x")
    folder.chmod(0)
    try:
        for path in (locked, folder / "w.pt"):
            assert inference.main(["--config", "t", "--saved_model", str(path)]) == 2
            err = capsys.readouterr().err
            assert "permission denied" in err and "no such file" not in err, err
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------ values that cannot be right


def _tiny_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)


def test_integer_weights_into_a_float_model_are_refused(tiny_model_dir):
    model = _tiny_model(tiny_model_dir)
    state = {k: v.to(torch.int8) if k == "classifier.weight" else v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"1 non-floating-point tensors .*classifier.weight \(int8 vs model float32\)"):
        load_into(model, state, "cast.pt", "state dict")


def test_half_precision_weights_are_cast_up(tiny_model_dir):
    model = _tiny_model(tiny_model_dir)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    for dtype in (torch.float16, torch.bfloat16):
        half = {k: v.to(dtype) for k, v in original.items()}
        load_into(model, half, "half.pt", "state dict")
        for key, tensor in model.state_dict().items():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, half[key].float()), key


def test_nonfinite_weights_refused_unless_allowed(tiny_model_dir, bad_checkpoints):
    model = _tiny_model(tiny_model_dir)
    before = model.classifier.weight.detach().clone()
    with pytest.raises(UserError, match=r"NaN or inf values in 1 tensors: classifier.weight; .*model.allow_nonfinite"):
        load_weights(model, bad_checkpoints / "nan.pt")
    assert torch.equal(model.classifier.weight, before)  # refused before anything was copied
    with pytest.raises(UserError, match="NaN or inf"):
        load_weights(
            model, bad_checkpoints / "nan.pt", LoadRules(allow_nonfinite=["bert.*"])
        )  # a glob that does not cover it
    report = load_weights(model, bad_checkpoints / "nan.pt", LoadRules(allow_nonfinite=["classifier.*"]))
    assert "classifier.weight" in report.loaded and torch.isnan(model.classifier.weight[0, 0])


# ------------------------------------------------------------ model config values the library rejects


def _spec(model_dir, **changes) -> dict:
    return {"name": str(model_dir), "num_labels": 1, "max_length": 48, **changes}


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (
            {"hidden_size": 33},
            "model.config_overrides: transformers cannot build a bert model with {hidden_size: 33} "
            "(ValueError: The hidden size (33) is not a multiple of the number of attention heads (2))",
        ),
        ({"num_hidden_layers": 0}, "model.config_overrides.num_hidden_layers: must be >= 1 (got 0)"),
        ({"intermediate_size": -5}, "model.config_overrides.intermediate_size: must be >= 1 (got -5)"),
        ({"hidden_size": 32.0}, "model.config_overrides.hidden_size: expected a whole number (like the model's 32)"),
        ({"num_attention_heads": True}, "model.config_overrides.num_attention_heads: expected a whole number"),
        (
            {"hidden_dropout_prob": 1.5},
            "model.config_overrides: transformers cannot build a bert model with {hidden_dropout_prob: 1.5}",
        ),
    ],
)
def test_impossible_config_overrides_name_the_key(tiny_model_dir, overrides, fragment):
    with pytest.raises(UserError) as caught:
        build_model_config(_spec(tiny_model_dir, config_overrides=overrides))
    assert fragment in str(caught.value), caught.value


def test_possible_config_overrides_apply(tiny_model_dir):
    config = build_model_config(
        _spec(
            tiny_model_dir, config_overrides={"num_hidden_layers": 3, "layer_norm_eps": 1e-7, "hidden_dropout_prob": 0}
        )
    ).config
    assert config.num_hidden_layers == 3 and config.layer_norm_eps == 1e-7 and config.hidden_dropout_prob == 0.0


def test_max_length_within_position_embeddings(tiny_model_dir, tmp_path):
    assert build_model_config(_spec(tiny_model_dir, max_length=128))[0].max_position_embeddings == 128
    with pytest.raises(
        UserError,
        match=r"^model.max_length: 129 exceeds the model's 128 positions; "
        r"set model.max_length <= 128$",
    ):
        build_model_config(_spec(tiny_model_dir, max_length=129))
    # RoBERTa-like models number positions after the padding index: 130 - pad 1 - 1 = 128 usable.
    from transformers import RobertaConfig

    RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
    ).save_pretrained(tmp_path)
    assert build_model_config(_spec(tmp_path, max_length=128))[0].model_type == "roberta"
    with pytest.raises(UserError, match="model.max_length: 129 exceeds the model's 128 positions"):
        build_model_config(_spec(tmp_path, max_length=129))
    with pytest.raises(UserError, match="model.max_length: 64 exceeds the model's 62 positions"):
        build_model_config(_spec(tmp_path, max_length=64, config_overrides={"max_position_embeddings": 64}))


# ------------------------------------------------------------ convert never clobbers


def _digest(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_convert_refuses_to_clobber(project, formats, tiny_model_dir, tmp_path, capsys):
    src = str(formats["state_dict_pt"])
    data_before = _digest(project / "data")
    assert checkpoint.main(["convert", src, "data", "--config", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "convert: OUT_DIR 'data' exists and is not empty" in err[0] and "--overwrite" in err[0]
    assert _digest(project / "data") == data_before

    for extra in ([], ["--overwrite"]):  # a file is never replaced by a directory
        assert checkpoint.main(["convert", src, "data/train.csv", "--config", "t", *extra]) == 2
        assert "'data/train.csv' is a file" in capsys.readouterr().err
    assert _digest(project / "data") == data_before

    copy = tmp_path / "hf"
    shutil.copytree(tiny_model_dir, copy)
    copy_before = _digest(copy)
    for out, fragment in ((copy, "is the checkpoint itself"), (copy / "sub", "is inside the checkpoint")):
        assert checkpoint.main(["convert", str(copy), str(out), "--config", "t"]) == 2
        assert fragment in capsys.readouterr().err
    assert _digest(copy) == copy_before


@pytest.mark.e2e
def test_convert_overwrite_replaces_only_the_model_files(project, formats, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text("{}")
    (out / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}')
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    assert checkpoint.main(["convert", str(formats["lightning_ckpt"]), str(out), "--config", "t"]) == 2
    assert checkpoint.main(["convert", str(formats["lightning_ckpt"]), str(out), "--config", "t", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    # The stale index would have shadowed the new model.safetensors: it and its shard are gone.
    assert not (out / "model.safetensors.index.json").exists()
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    np.testing.assert_array_equal(predictions(project, str(out)), predictions(project, str(tiny_model_dir)))


@pytest.mark.e2e
def test_convert_into_the_current_directory_leaves_no_temporary(project, formats, monkeypatch):
    work = project / "conv"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["convert", str(formats["state_dict_pt"]), ".", "--config", str(project / "configs" / "t.yaml")]
    assert checkpoint.main(args) == 0
    names = sorted(p.name for p in work.iterdir())
    assert "config.json" in names and "model.safetensors" in names and not [n for n in names if n.startswith(".")]
    assert checkpoint.main(args) == 2  # now it is not empty
    (work / "mine.txt").write_text("x")
    assert checkpoint.main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in work.iterdir()) == sorted(names + ["mine.txt"])


@pytest.mark.parametrize("architecture", ["bert", "roberta", "mpnet"])
@pytest.mark.parametrize("kind", ["cross_encoder", "bi_encoder"])
def test_the_documented_lower_half_freeze_fits_every_layout(tmp_path, architecture, kind):
    """docs/recipes-and-metrics.md's globs freeze the embeddings, layers 0-5 and MPNet's shared position
    bias of a 12-layer model, and nothing above: the backward pass can stop at layer 6. BERT and RoBERTa
    take them without the position-bias glob (as the docs say: it would match nothing there)."""
    import re

    import yaml
    from transformers import AutoConfig, AutoModel

    from conftest import REPO
    from plaintune.model.loading import apply_freeze, build_model

    docs = (REPO / "docs" / "recipes-and-metrics.md").read_text(encoding="utf-8")
    globs = yaml.safe_load(re.search(r"'model\.freeze=(\[[^']*\])'", docs).group(1))
    if architecture != "mpnet":
        assert "For BERT or RoBERTa drop that glob" in docs
        globs = [glob for glob in globs if glob != "*relative_attention_bias*"]
    config = AutoConfig.for_model(
        architecture,
        vocab_size=120,
        hidden_size=16,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    AutoModel.from_config(config).save_pretrained(tmp_path)
    model = build_model({"name": str(tmp_path), "kind": kind, "num_labels": 1}, pretrained=False)
    apply_freeze(model, globs, [])
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    layer = re.compile(r"\.layer\.(\d+)\.")
    for name, _ in model.named_parameters():
        number = layer.search(name)
        lower = (
            "embeddings." in name
            or "relative_attention_bias" in name
            or (number is not None and int(number.group(1)) < 6)
        )
        assert (name in frozen) == lower, name
    assert any(layer.search(name) and int(layer.search(name).group(1)) == 5 for name in frozen)

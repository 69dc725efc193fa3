"""Config loading: every shipped config validates; every class of mistake is one clear error."""

from __future__ import annotations

import pytest
import torch
import yaml
from box import BoxError

from conftest import REPO, base_config
from plaintune.config import load as config_mod
from plaintune.config.load import load_config
from plaintune.config.schema import LEAVES
from plaintune.config.validation import validate
from plaintune.errors import UserError
from plaintune.recipe.optim import build_optimizer

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    data, _ = config_mod.read_yaml(path)
    if "program" in data:  # a wandb sweep spec, not a run config
        pytest.skip("sweep spec")
    cfg = validate(data, source=str(path))
    assert cfg.run_name and cfg.model.name
    if data["data"].get("dir") == "data":  # the user's files: the shipped demo set stands in for them
        data["data"]["dir"] = "data/demo"
    validate(data, source=str(path), purpose="train")  # shipped data must exist
    validate(data, source=str(path), purpose="inference")


def test_shipped_configs_include_the_contract_ones():
    assert {"default", "roberta_small", "tiny"} <= {p.stem for p in SHIPPED}


def problems_of(data: dict, purpose=None) -> str:
    with pytest.raises(UserError) as err:
        validate(data, source="c.yaml", purpose=purpose)
    return str(err.value)


@pytest.fixture
def cfg_dict(tiny_model_dir) -> dict:
    return base_config(tiny_model_dir)


def test_a_number_given_as_a_string_in_python_is_named(cfg_dict):
    """The 2e-5 rule lives in the YAML reader; a dict built in Python says what it means."""
    cfg_dict["training"]["learning_rate"] = "2e-5"
    assert "training.learning_rate: expected a number, got '2e-5'" in problems_of(cfg_dict)


def test_scientific_notation_in_a_config_file_reaches_the_optimizer_as_floats(project):
    """YAML 1.1 reads 2e-5 and 1e-8 (no dot before the e) as strings: through load_config they
    arrive at the optimizer as the numbers they mean."""
    path = project / "configs" / "t.yaml"
    text = path.read_text()
    assert "learning_rate: 0.001\n" in text and "    weight_decay: 0.01\n" in text
    path.write_text(
        text.replace("learning_rate: 0.001\n", "learning_rate: 2e-5\n").replace(
            "    weight_decay: 0.01\n", "    weight_decay: 1e-2\n    eps: 1e-8\n"
        )
    )
    cfg = load_config("t")
    assert isinstance(cfg.training.learning_rate, float) and cfg.training.learning_rate == pytest.approx(2e-5)
    optimizer = build_optimizer(cfg.training.optimizer, torch.nn.Linear(2, 1), cfg.training.learning_rate)
    weights = optimizer.param_groups[0]  # the decayed group: the 2-D weight
    for key, value in (("lr", 2e-5), ("eps", 1e-8), ("weight_decay", 1e-2)):
        assert isinstance(weights[key], float) and weights[key] == pytest.approx(value), key


def test_a_loaded_config_cannot_be_changed(project):
    """Nothing mutates the config mid-run: code that needs other values builds a copy (with_values)."""
    cfg = load_config("t")
    for change in (
        lambda: setattr(cfg.training, "epochs", 9),
        lambda: cfg.__setitem__("seed", 1),
        lambda: cfg.model.update({"num_labels": 3}),
        lambda: delattr(cfg, "model"),
        lambda: cfg.data.pop("train_path"),
    ):
        with pytest.raises(BoxError, match="frozen"):
            change()
    with pytest.raises((TypeError, AttributeError)):  # lists are frozen too
        cfg.inference.clip[0] = 1.0
    assert cfg.training.epochs == 2 and cfg.seed == 7 and cfg.model.num_labels == 1

    changed = config_mod.with_values(cfg, {"training.epochs": 9, "data.test_path": "data/test.csv"})
    assert changed.training.epochs == 9 and changed.data.test_path == "data/test.csv"
    assert cfg.training.epochs == 2 and cfg.data.test_path is None  # the original is untouched
    with pytest.raises(BoxError, match="frozen"):
        changed.training.epochs = 1
    assert config_mod.to_plain(changed)["inference"]["clip"] == [0.0, 5.0]  # plain lists again for YAML


def test_defaults_fill_missing_keys(cfg_dict):
    del cfg_dict["checkpoint"]
    cfg = validate(cfg_dict)
    assert cfg.checkpoint.every_n_steps == 200
    assert cfg.inference.round == 1 and list(cfg.inference.clip) == [0.0, 5.0]


@pytest.mark.parametrize(
    "section,key,suggestion",
    [
        (None, "sed", "seed"),
        ("training", "learning_rat", "training.learning_rate"),
        ("training", "epoch", "training.epochs"),
        ("model", "nmae", "model.name"),
        ("data", "train_pth", "data.train_path"),
        ("training", "seed", "seed"),  # right name, wrong section
        ("inference", "output", "inference.output_path"),
    ],
)
def test_unknown_key_suggests_nearest(cfg_dict, section, key, suggestion):
    (cfg_dict if section is None else cfg_dict[section])[key] = 1
    message = problems_of(cfg_dict)
    assert "unknown key" in message
    assert f"did you mean {suggestion}?" in message


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("training.epochs", "three", "expected a whole number"),
        ("training.epochs", 0, "must be >= 1"),
        ("training.batch_size", -4, "must be >= 1"),
        ("training.learning_rate", 0, "must be > 0"),
        ("training.learning_rate", "fast", "expected a number"),
        ("training.precision", "fp8", "is not one of auto, fp32, bf16, fp16"),
        ("logging.wandb.mode", "sometimes", "is not one of"),
        ("model.num_labels", 0, "must be >= 1"),
        ("inference.clip", [5, 0], "low must not exceed high"),
        ("inference.clip", "0-5", "expected a list"),
        ("training.bucket_batches", "yes", "expected true or false"),
        ("device", "gpu", "must be auto, cpu, cuda"),
        ("model", "bert", "expected a section of keys"),
        ("model.key_rules", [["^a"]], "pairs"),
    ],
)
def test_wrong_values_name_the_key(cfg_dict, path, value, fragment):
    node = cfg_dict
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    message = problems_of(cfg_dict)
    assert path in message and fragment in message


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("training.loss", "MSE_Los", "unknown loss"),
        ("training.loss", "CrossEntropyLoss", "is for classification"),
        ("training.optimizer", {"name": "Adamm"}, "unknown optimizer"),
        ("training.optimizer", {"name": "AdamW", "betas2": 0.9}, "training.optimizer.betas2: not an argument of AdamW"),
        ("training.optimizer", {"name": "SGD", "lr": 0.1}, "set training.learning_rate instead"),
        ("training.scheduler", {"name": "cosin"}, "unknown scheduler"),
        ("training.scheduler", {"name": "linear", "warmup": 0.1}, "not an option of the linear scheduler"),
        ("training.scheduler", {"name": "linear", "warmup_ratio": 3}, "between 0 and 1"),
        ("training.scheduler", {"name": "linear", "warmup_ratio": 0.1, "warmup_steps": 5}, "not both"),
    ],
)
def test_component_names_and_arguments(cfg_dict, path, value, fragment):
    section, leaf = path.split(".")
    cfg_dict[section][leaf] = value
    message = problems_of(cfg_dict)
    assert fragment in message


def test_optimizer_kwargs_written_in_yaml_are_numbers(project):
    cfg = config_mod.load_config("t", ["training.optimizer={name: AdamW, eps: 1e-8, betas: [0.9, 0.98]}"])
    assert cfg.training.optimizer.eps == 1e-8 and isinstance(cfg.training.optimizer.eps, float)


def test_all_problems_reported_at_once(cfg_dict):
    cfg_dict["training"]["epochs"] = 0
    cfg_dict["training"]["batch_sise"] = 3
    cfg_dict["seed"] = "x"
    message = problems_of(cfg_dict)
    assert "3 problems" in message
    assert "training.epochs" in message and "training.batch_sise" in message and "seed" in message


def test_required_key_missing(cfg_dict):
    del cfg_dict["model"]["name"]
    assert "model.name: required key is missing" in problems_of(cfg_dict)


def test_missing_data_files_for_the_command(cfg_dict, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = problems_of(cfg_dict, purpose="train")
    assert "data.train_path: file 'data/train.csv' does not exist" in message
    assert "data.dev_path" in message and "predict_path" not in message
    message = problems_of(cfg_dict, purpose="inference")
    assert "data.predict_path" in message and "data.submission_template" in message


def test_load_by_name_and_by_path_with_overrides(project):
    cfg = load_config("t", ["training.epochs=3", "model.max_length=32", "training.learning_rate=3e-5"])
    assert cfg.training.epochs == 3 and cfg.model.max_length == 32
    assert cfg.training.learning_rate == pytest.approx(3e-5)
    cfg = load_config(str(project / "configs" / "t.yaml"))
    assert cfg.training.epochs == 2
    assert cfg.training.optimizer.name == "AdamW"  # attribute access


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("training.epochs", "must look like key.path=value"),
        ("=3", "must look like key.path=value"),
        ("training..epochs=3", "must look like key.path=value"),
        ("training.epoch=3", "did you mean training.epochs?"),
        ("training.epochs=[1", "cannot parse the value"),
        ("seed.x=1", "seed is not a section"),
    ],
)
def test_bad_overrides(project, override, fragment):
    with pytest.raises(UserError) as err:
        load_config("t", [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "the config is empty"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("model:\n  name: [unclosed\n", "invalid YAML"),
        ("a: 1\n\tb: 2\n", "invalid YAML"),
    ],
)
def test_bad_yaml_files(project, text, fragment):
    (project / "configs" / "bad.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        load_config("bad")
    assert fragment in str(err.value) and "bad.yaml" in str(err.value)


def test_unknown_config_name_lists_shipped(project):
    with pytest.raises(UserError) as err:
        load_config("nope")
    assert "config 'nope' not found" in str(err.value) and "t" in str(err.value)


def test_dump_round_trips(project):
    cfg = load_config("t")
    again = validate(yaml.safe_load(config_mod.dump_yaml(cfg)))
    assert config_mod.to_plain(again) == config_mod.to_plain(cfg)


def test_config_reference_page_is_current():
    """docs/config.md is the generated page, byte for byte: a key added to the schema, a changed default,
    doc or role makes this fail until `python -m plaintune.config --update-docs` is run."""
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == config_mod.reference_page(), (
        "docs/config.md is stale: regenerate it with python -m plaintune.config --update-docs"
    )
    for key, spec in LEAVES.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"docs/config.md lacks {key}"
        assert row.split(" | ")[1] == config_mod.role_label(spec.role)
    assert "| `training.learning_rate` | identity | `2.0e-05` |" in page
    assert "| `data.augment.swap` | identity | `false` |" in page


def test_update_docs_rewrites_the_page_and_refuses_unknown_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert config_mod.main(["--update-docs"]) == 2  # no docs/ here: one line, exit 2
    assert "run it in the repository's root" in capsys.readouterr().err
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "config.md").write_text("stale", encoding="utf-8")
    assert config_mod.main(["--update-docs"]) == 0
    assert (tmp_path / "docs" / "config.md").read_text(encoding="utf-8") == config_mod.reference_page()
    assert config_mod.main(["--update-readme"]) == 2
    assert "--update-docs" in capsys.readouterr().err

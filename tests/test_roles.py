"""One source of truth: every key's role on its schema Field, the checks derived from it, the YAML reader
that refuses duplicate keys, and problems blamed on where their values came from."""

from __future__ import annotations

import copy

import pytest

import train
from conftest import base_config
from plaintune import api
from plaintune.config import load as config_mod
from plaintune.config import schema
from plaintune.config.schema import IDENTITY, INFERENCE, LEAVES, PREDICTION, SHARED, Field, Role
from plaintune.errors import ConfigError, Problem, UserError
from plaintune.kfold import ensemble
from plaintune.training import resume

# ---------------------------------------------------------------- roles


def test_a_field_without_a_role_cannot_be_written():
    with pytest.raises(TypeError):
        Field(int, 1, "doc")  # noqa - the role is the first argument and has no default
    with pytest.raises(TypeError, match="exactly one"):
        Field(IDENTITY | Role.RUNTIME, int, 1, "doc")
    with pytest.raises(TypeError, match="exactly one"):
        Field(INFERENCE, int, 1, "doc")


def test_keys_that_change_the_meaning_of_the_data_are_identity():
    """A resume that doubles the epoch (swap) or rescales every target (label_range) is another run."""
    for key in (
        "data.augment.swap",
        "data.label_range",
        "data.train_path",
        "model.name",
        "training.learning_rate",
        "model.freeze",
        "training.max_grad_norm",
    ):
        assert IDENTITY in LEAVES[key].role, key


def test_inference_reads_exactly_the_keys_marked_for_it():
    inference_keys = set(schema.keys_with(INFERENCE))
    assert {
        "model.name",
        "data.predict_path",
        "inference.round",
        "training.eval_batch_size",
        "training.precision",
    } <= inference_keys
    assert (
        not {"training.epochs", "training.optimizer", "checkpoint.every_n_steps", "data.augment.swap"} & inference_keys
    )


def drift(change: dict) -> tuple[list[str], list[str]]:
    saved = config_mod.to_plain(config_mod.validate(base_config(schema.__file__)))
    current = copy.deepcopy(saved)
    for dotted, value in change.items():
        schema.assign(current, dotted, value)
    return resume.check_drift(saved, current)


@pytest.mark.parametrize("key", sorted(LEAVES))
def test_check_drift_classifies_every_key_by_its_role(key):
    """Changing any key shows up in the right list: identity keys refuse, the rest are noted."""
    saved = config_mod.to_plain(config_mod.validate(base_config(schema.__file__)))
    current = copy.deepcopy(saved)
    schema.assign(current, key, ["changed"] if schema.lookup(saved, key) != ["changed"] else ["other"])
    identity, other = resume.check_drift(saved, current)
    if IDENTITY in LEAVES[key].role:
        assert identity == [key] and other == []
    else:
        assert identity == [] and other == [key]


def test_a_key_the_old_checkpoint_did_not_know_is_no_change():
    saved = config_mod.to_plain(config_mod.validate(base_config(schema.__file__)))
    current = copy.deepcopy(saved)
    del saved["data"]["augment"]
    del saved["training"]["ema"]
    assert resume.check_drift(saved, current) == ([], [])


def test_auto_is_compared_as_each_run_resolved_it():
    """The config keeps the user's auto; last.pt records what it resolved to. A resume whose config still
    says auto continues with the checkpoint's value (no change); a concrete value that differs is one."""
    from plaintune.training.derived import effective, resumed_values

    saved = config_mod.to_plain(config_mod.validate(base_config(schema.__file__)))
    saved["training"]["precision"], saved["training"]["loss"] = "auto", "auto"
    resolved = {"training.precision": "bf16", "training.loss": "bce"}
    assert set(resolved) <= set(schema.resolved_keys())
    current = copy.deepcopy(saved)
    then = effective(saved, resolved)
    assert resume.check_drift(then, effective(current, resumed_values(current, resolved))) == ([], [])
    current["training"]["precision"] = "fp32"
    assert resume.check_drift(then, effective(current, resumed_values(current, resolved))) == (
        [],
        ["training.precision"],
    )


@pytest.mark.e2e
@pytest.mark.parametrize("override", ["data.augment.swap=true", "data.label_range=[0, 10]"])
def test_a_resume_that_changes_the_data_meaning_is_refused(project, capsys, override):
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    capsys.readouterr()
    assert train.main(["--config", "t", "training.epochs=2", override, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and override.split("=")[0] in err and "--force" in err


def test_members_may_set_only_what_the_schema_allows(project):
    base = config_mod.validate(base_config(schema.__file__))
    for key in schema.keys_with(SHARED):
        if key in ("ensemble.members",):
            continue
        value = schema.lookup(config_mod.to_plain(base), key)
        members = {"m": [f"{key}={config_mod.yamlfile.dump(value).strip() if value is not None else 'null'}"]}
        cfg = config_mod.with_values(base, {"ensemble.members": members})
        with pytest.raises(UserError, match=f"may not set {key}"):
            ensemble.member_configs(cfg, "c.yaml")
    # a section given as a mapping sets each of its keys
    cfg = config_mod.with_values(base, {"ensemble.members": {"m": ["data={train_path: x.csv}"]}})
    with pytest.raises(UserError, match="may not set data.train_path"):
        ensemble.member_configs(cfg, "c.yaml")


def test_prediction_keys_are_the_shared_ones_inference_applies():
    assert set(schema.keys_with(PREDICTION)) <= set(schema.keys_with(INFERENCE))


# ---------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("training:\n  epochs: 1\ntraining:\n  batch_size: 2\n", "training", (1, 3)),
        ("seed: 1\nmodel:\n  name: x\n  name: y\n", "model.name", (3, 4)),
        ("data:\n  columns: {id: a, id: b}\n", "data.columns.id", None),
    ],
)
def test_a_key_written_twice_in_a_config_file_is_an_error(project, text, key, lines):
    (project / "configs" / "dup.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        config_mod.load_config("dup")
    message = str(err.value)
    where = f"line {lines[0]} and line {lines[1]}" if lines else "twice on line 2"
    assert f"{key} is written twice ({where})" in message and "dup.yaml" in message


def test_a_key_written_twice_inside_an_override_is_an_error(project):
    with pytest.raises(UserError, match=r"training.epochs is written twice"):
        config_mod.load_config("t", ["training={epochs: 1, epochs: 2}"])


@pytest.mark.e2e
def test_the_cli_reports_a_duplicate_in_one_line(project, capsys):
    path = project / "configs" / "t.yaml"
    path.write_text(path.read_text() + "seed: 3\n")
    assert train.main(["--config", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed is written twice" in err[0]


@pytest.mark.parametrize(
    "text, expected",
    [("2e-5", 2e-5), ("1E8", 1e8), ("-3.5e+2", -350.0), (".5e-1", 0.05), ("1_000", 1000), ("7", 7), ("0x10", 16)],
)
def test_numbers_in_exponent_form_are_numbers(text, expected):
    value = config_mod.yamlfile.load_value(text, "x")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["1e5x", "e5", "2e", "v1e5"])
def test_strings_that_only_look_like_numbers_stay_strings(text):
    assert config_mod.yamlfile.load_value(text, "x") == text


# ---------------------------------------------------------------- blame


def test_a_problem_carries_its_key_message_and_origin():
    err = ConfigError(
        [Problem("training.epochs", "must be >= 1", "c.yaml:3"), Problem("sed", "unknown key", "command line")]
    )
    assert err.problems[0].key == "training.epochs" and err.problems[1].origin == "command line"
    assert str(err) == "2 problems: c.yaml:3: training.epochs: must be >= 1; command line: sed: unknown key"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "override, key",
    [
        ("trainig.epochs=2", "trainig"),  # a mistyped section, top level
        ("sed=1", "sed"),
        ("training.epochs=0", "training.epochs"),
        ("training={epochs: 0}", "training.epochs"),
        ("model.max_length=3", "model.max_length"),
    ],
)
def test_a_bad_override_is_blamed_on_the_command_line(project, capsys, override, key):
    assert train.main(["--config", "t", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: command line: {key}"), err


@pytest.mark.e2e
def test_a_bad_value_in_the_file_is_blamed_on_its_line(project, capsys):
    path = project / "configs" / "t.yaml"
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, start=1) if line.strip().startswith("epochs:"))
    lines[number - 1] = lines[number - 1].split(":")[0] + ": 0"
    path.write_text("\n".join(lines) + "\n")
    assert train.main(["--config", "t"]) == 2
    assert f"configs/t.yaml:{number}: training.epochs: must be >= 1" in capsys.readouterr().err


def test_problems_from_both_places_are_each_blamed(project):
    path = project / "configs" / "t.yaml"
    path.write_text(path.read_text() + "sed: 1\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load_config("t", ["training.epochs=0"])
    origins = {p.key: p.origin for p in err.value.problems}
    assert origins["training.epochs"] == "command line" and origins["sed"].startswith("configs/t.yaml:")


@pytest.mark.e2e
def test_the_python_api_names_itself_not_the_command_line(project):
    with pytest.raises(ConfigError) as err:
        api.train("t", "training.epochs=0")
    assert err.value.problems[0].origin == "overrides given to plaintune"
    with pytest.raises(UserError, match="resume: expected True, False or the path"):
        api.train("t", resume=1)


def test_a_message_with_semicolons_is_not_split(project):
    """A problem whose own text has '; ' keeps its key and origin: nothing parses messages."""
    err = ConfigError([Problem("data.columns.id", "a; b; c", "command line")])
    assert str(err) == "command line: data.columns.id: a; b; c"

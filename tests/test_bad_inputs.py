"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the real CLIs, plus property tests:
any config or CSV either loads or raises the project's own UserError, never anything else."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inference
import train
from conftest import base_config, write_config
from plaintune.config.load import to_plain
from plaintune.config.schema import SCHEMA
from plaintune.config.validation import validate
from plaintune.data.tables import read_pairs
from plaintune.errors import UserError
from plaintune.recipe.optim import OPTIMIZERS, canonical_name

# Every YAML file under tests/bad_inputs/ holds cases (one file per theme).
CASES = [
    case
    for path in sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))
    for case in yaml.safe_load(path.read_text(encoding="utf-8")) or []
]


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c["name"] for c in CASES}) == len(CASES)


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def fill(value, tiny: Path):
    if isinstance(value, str):
        return value.replace("{tiny}", str(tiny))
    if isinstance(value, dict):
        return {k: fill(v, tiny) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, tiny) for v in value]
    return value


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir):
    """One trained tiny run, copied into projects that need a model for inference."""
    root = tmp_path_factory.mktemp("trained")
    from conftest import DEMO

    (root / "data").mkdir()
    for name, rows in (("train.csv", 48), ("dev.csv", 24)):
        lines = (DEMO / name).read_text().splitlines()
        (root / "data" / name).write_text("\n".join(lines[: rows + 1]) + "\n")
    write_config(root, base_config(tiny_model_dir))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert train.main(["--config", "t", "training.epochs=1"]) == 0
    finally:
        os.chdir(cwd)
    return root / "saved_model" / "t"


def tree_digest(path: Path) -> dict:
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, project, tiny_model_dir, trained_run, bad_checkpoints, capsys, monkeypatch):
    for name, value in (case.get("env") or {}).items():
        monkeypatch.setenv(name, value)
    cfg = merge(base_config(tiny_model_dir), fill(case.get("config", {}), tiny_model_dir))
    write_config(project, cfg)
    if "config_text" in case:
        (project / "configs" / "t.yaml").write_text(case["config_text"], encoding="utf-8")
    for rel, text in (case.get("files") or {}).items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(case.get("encoding", "utf-8")))
    if "template_rows" in case:
        template = project / "data" / "sample_submission.csv"
        template.write_text("\n".join(template.read_text().splitlines()[: case["template_rows"] + 1]) + "\n")
    config_name = case.get("args_replace_config", "t")

    if case["cmd"] == "inference":
        shutil.copytree(trained_run, project / "saved_model" / "t")
        saved = case.get("args_saved_model", "t")
        if "checkpoint" in case:
            saved = str(bad_checkpoints / case["checkpoint"])
        argv = ["--config", config_name, "--saved_model", saved, *case.get("args", [])]
    else:
        argv = ["--config", config_name, *case.get("args", [])]

    before = {name: tree_digest(project / name) for name in ("saved_model", "data", "output")}
    capsys.readouterr()
    code = (inference.main if case["cmd"] == "inference" else train.main)(argv)
    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line.strip()]

    assert code == 2, f"exit {code}; stderr: {captured.err[-1500:]}"
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in case["expect"]:
        assert fragment in err_lines[0], f"{fragment!r} not in {err_lines[0]!r}"
    for fragment in case.get("absent", []):  # words that were once there and misled
        assert fragment not in err_lines[0], f"{fragment!r} in {err_lines[0]!r}"
    # nothing written, nothing damaged
    for name, digest in before.items():
        assert tree_digest(project / name) == digest, f"{name}/ changed"
    assert not (project.parent / "outside").exists(), "wrote outside the project"


# ------------------------------------------------------------- property tests

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
config_keys = st.sampled_from(
    ["seed", "run_name", "device", "model", "data", "training", "inference", "logging", "checkpoint", "bogus"]
)
section_keys = st.sampled_from(
    [
        "name",
        "num_labels",
        "epochs",
        "batch_size",
        "learning_rate",
        "loss",
        "optimizer",
        "scheduler",
        "clip",
        "round",
        "columns",
        "label_range",
        "mode",
        "wandb",
        "x",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(
        config_keys, yaml_values | st.dictionaries(section_keys, yaml_values, max_size=4), max_size=4
    )
)
def test_config_loader_never_crashes(changes, tiny_model_dir):
    data = merge(base_config(tiny_model_dir), changes)
    try:
        cfg = validate(data)
    except UserError as err:
        assert str(err).startswith("config: ")
        return
    assert_conforms(to_plain(cfg), SCHEMA, "")  # whatever passes holds only values the schema allows


def assert_conforms(cfg: dict, schema: dict, prefix: str) -> None:
    """Every key of `schema` and no other, each value of its type, among its choices, passing its check."""
    assert set(cfg) == set(schema), prefix
    for key, spec in schema.items():
        where, value = f"{prefix}{key}", cfg[key]
        if isinstance(spec, dict):
            assert_conforms(value, spec, where + ".")
        elif value is None:
            assert spec.nullable, where
        else:
            assert isinstance(value, spec.kind) and not (isinstance(value, bool) and spec.kind in (int, float)), where
            assert spec.choices is None or value in spec.choices, where
            assert spec.check is None or spec.check(value) is None, where


def not_one_of(*allowed: str):
    return st.text(max_size=8).filter(lambda s: s not in allowed)


def disordered_pairs():
    finite = st.floats(-1e6, 1e6)
    return (
        st.tuples(finite, finite).filter(lambda p: p[0] > p[1]).map(list)
        | st.lists(finite, min_size=3, max_size=4)
        | st.just("0-5")
    )


# Values each key must refuse (the fuzz test above would pass if validation accepted everything).
INVALID = {
    "seed": st.integers(max_value=-1) | st.integers(2**32, 2**40) | st.text(min_size=1).filter(str.isalpha),
    "run_name": st.sampled_from(["a/b", "..", " x", "a\\b", "x\n", "r" * 201]),
    "device": st.text(max_size=8).filter(lambda s: not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", s)),
    "model.num_labels": st.integers(max_value=0) | st.booleans(),
    "model.max_length": st.integers(max_value=7)
    | st.integers(8193, 10**6)
    | st.floats(8.5, 100.5).filter(lambda f: not f.is_integer()),
    "model.dropout": st.floats(0.9, 1e6, exclude_min=True)
    | st.floats(max_value=0.0, exclude_max=True)
    | st.just("high"),
    "model.kind": not_one_of("cross_encoder", "bi_encoder"),
    "model.allow_missing": st.lists(st.integers(), min_size=1, max_size=3) | st.just("classifier.*"),
    "data.label_range": disordered_pairs(),
    "data.max_overlap": st.floats(1.0, 1e6, exclude_min=True) | st.floats(max_value=0.0, exclude_max=True),
    "training.epochs": st.integers(max_value=0) | st.booleans() | st.text(min_size=1).filter(str.isalpha),
    "training.batch_size": st.integers(max_value=0),
    "training.learning_rate": st.floats(max_value=0.0) | st.just(float("nan")) | st.just(float("inf")),
    "training.precision": not_one_of("auto", "fp32", "bf16", "fp16"),
    "training.micro_batch_tokens": st.integers(max_value=15) | not_one_of("auto"),
    "training.optimizer": st.fixed_dictionaries(
        {"name": st.text(max_size=8).filter(lambda s: canonical_name(s) not in OPTIMIZERS)}
    ),
    "checkpoint.keep_last": st.integers(max_value=0),
    "inference.clip": disordered_pairs(),
    "inference.round": st.integers(max_value=-1),
    "logging.wandb.mode": not_one_of("auto", "online", "offline", "disabled"),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(INVALID)).flatmap(lambda key: st.tuples(st.just(key), INVALID[key])))
def test_config_loader_rejects_invalid_values_naming_the_key(case, tiny_model_dir):
    path, value = case
    data = base_config(tiny_model_dir)
    *sections, leaf = path.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    with pytest.raises(UserError) as err:
        validate(data)
    assert str(err.value).startswith("config: ") and f"{path}" in str(err.value), str(err.value)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), raw=st.binary(max_size=200))
def test_csv_reader_never_crashes(text, raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    columns = {"id": "id", "sentence_1": "sentence_1", "sentence_2": "sentence_2", "label": "label"}
    for name, content in (
        (
            "a.csv",
            ("id,sentence_1,sentence_2,label\n" + text).encode("utf-8", "surrogatepass")
            if "\ud800" not in text
            else b"",
        ),
        ("b.csv", raw),
        ("c.csv", b"id,sentence_1,sentence_2,label\n" + raw),
    ):
        path = folder / name
        path.write_bytes(content)
        for labelled in (True, False):
            try:
                read_pairs(
                    str(path), "data.train_path", columns, labelled=labelled, label_range=[0, 5], unique_ids=True
                )
            except UserError:
                pass

"""Config validation: a plain dict checked against the schema and returned complete and frozen.

Every problem is collected before anything heavy loads and reported at once:
unknown keys (with the nearest valid key), wrong types, bad choices, out-of-range
numbers, unknown loss/optimizer/scheduler names and their keyword arguments,
and missing data files.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from box import Box

from .errors import UserError
from .schema import REQUIRED, SCHEMA, Field

# Which data files must exist for which command.
REQUIRED_FILES = {
    "train": ("train_path", "dev_path"),
    "inference": ("predict_path", "submission_template"),
}


def freeze(data: dict) -> Box:
    """`data` as the config the rest of plaintune reads: attribute access, read-only (lists become tuples)."""
    return Box(data, frozen_box=True, default_box=False)


def _all_leaf_paths(schema: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, spec in schema.items():
        full = f"{prefix}{key}"
        paths += _all_leaf_paths(spec, full + ".") if isinstance(spec, dict) else [full]
    return paths


def _suggest(key: str, prefix: str, siblings: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    # Maybe it belongs in another section (e.g. training.seed -> seed).
    elsewhere = [p for p in _all_leaf_paths(SCHEMA) if p.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {elsewhere[0]}?"
    return ""


def _coerce_kind(kind: type, value: Any, choices: Optional[tuple]) -> tuple[Any, Optional[str]]:
    """(`value` converted to `kind`, None) or (`value`, the problem)."""
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)  # PyYAML reads 2e-5 as a string
            except ValueError:
                return value, f"expected a number, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"expected a number, got {value!r}"
        value = float(value)
        return value, None if math.isfinite(value) else f"must be a finite number (got {value})"
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, None if ok else f"expected a whole number, got {value!r}"
    if kind is bool:
        return value, None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and choices is None:
            value = str(value)
        if not isinstance(value, str):
            return value, f"expected a string, got {value!r}"
        return value, None if value.strip() else "must not be an empty string"
    return value, None if isinstance(value, kind) else f"expected a {kind.__name__}, got {value!r}"


def _coerce(field: Field, value: Any, where: str, problems: list[str]) -> Any:
    if value is None:
        if not field.nullable:
            problems.append(f"{where}: must not be empty/null")
        return value
    value, problem = _coerce_kind(field.kind, value, field.choices)
    if problem is None and field.choices is not None and value not in field.choices:
        problem = f"{value!r} is not one of {', '.join(map(str, field.choices))}"
    elif problem is None and field.check is not None:
        problem = field.check(value)
    if problem:
        problems.append(f"{where}: {problem}")
    return value


def _validate_section(data: Any, schema: dict, prefix: str, problems: list[str]) -> dict:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a section of keys, got {data!r}")
        data = {}
    out = {}
    for key in data:
        if key not in schema:
            problems.append(f"{prefix}{key}: unknown key{_suggest(str(key), prefix, schema)}")
    for key, spec in schema.items():
        where = f"{prefix}{key}"
        if isinstance(spec, dict):
            out[key] = _validate_section(data.get(key, {}) if data.get(key) is not None else {}, spec,
                                         where + ".", problems)
        elif key in data:
            value = data[key]
            if spec.open_keys and isinstance(value, dict) and isinstance(spec.default, dict):
                value = {**({} if "name" in value else spec.default), **value}
            out[key] = _coerce(spec, value, where, problems)
        elif spec.default is REQUIRED:
            problems.append(f"{where}: required key is missing")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


RUN_NAME = re.compile(r"[^/\\\x00-\x1f]+")


def _nonfinite_leaves(node: Any, where: str) -> list[str]:
    """Paths of NaN/inf numbers anywhere below `node` (open dicts such as optimizer options included)."""
    if isinstance(node, float) and not math.isfinite(node):
        return [where]
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _nonfinite_leaves(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _nonfinite_leaves(value, f"{where}[{i}]")]
    return []


def _check_values(cfg: dict, problems: list[str]) -> None:
    """Values that pass their type but cannot be: checks that span keys or need more than a type."""
    for section in ("model", "data", "training", "inference", "checkpoint"):
        for where in _nonfinite_leaves(cfg[section], section):
            problems.append(f"{where}: must be a finite number, not NaN or infinity")
    if not 0 <= cfg["seed"] < 2**32:
        problems.append(f"seed: must be between 0 and 2**32 - 1 (got {cfg['seed']})")
    name = cfg["run_name"]
    if not RUN_NAME.fullmatch(name) or name.strip(".") == "" or name != name.strip() or len(name) > 200:
        problems.append(f"run_name: {name!r} is not a plain name (no '/', '\\', '..' or control characters, at "
                        "most 200 characters); runs go under output_dir, so give just a name, e.g. "
                        "run_name=roberta_lr3")
    label_range = cfg["data"]["label_range"]
    if isinstance(label_range, list) and len(label_range) == 2 and label_range[0] == label_range[1]:
        problems.append(f"data.label_range: low and high are equal ({label_range}); labels need a range, e.g. "
                        "[0.0, 5.0]")
    if cfg["model"]["num_labels"] > 1 and cfg["training"]["metric"] in ("pearson", "spearman"):
        problems.append(f"training.metric: {cfg['training']['metric']} correlates scores, but model.num_labels is "
                        f"{cfg['model']['num_labels']} (classification); use accuracy, f1 or loss")
    columns = cfg["data"]["columns"]
    read = {key: columns[key] for key in ("id", "sentence_1", "sentence_2", "label")}
    seen: dict = {}
    for key, column in read.items():
        if column in seen:
            problems.append(f"data.columns.{key}: '{column}' is also data.columns.{seen[column]}; each role needs "
                            "its own column")
        seen.setdefault(column, key)
    if columns["target"] == columns["id"]:
        problems.append(f"data.columns.target: '{columns['target']}' is the id column; predictions would overwrite "
                        "the ids: name the template's score column (e.g. target)")


def _check_files(cfg: dict, purpose: Optional[str], base: Path, problems: list[str]) -> None:
    data = cfg["data"]
    keys = list(REQUIRED_FILES.get(purpose, ()))
    if purpose == "train" and data.get("test_path"):
        keys.append("test_path")
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and not (base / value).is_file():
            problems.append(f"data.{key}: file '{value}' does not exist; fix the path or override it "
                            f"(data.{key}=path/to/file.csv)")


# ---------------------------------------------------------------- the whole config

# Keys inference reads from the training and checkpoint sections; the rest there only training reads.
INFERENCE_READS = ("training.eval_batch_size", "training.precision", "training.num_workers")


def _training_only(problem: str) -> bool:
    """Whether a problem is about the value of a key that only training reads (typos still count)."""
    key = problem.split(":", 1)[0]
    return (key.startswith(("training.", "checkpoint.", "logging.", "data.augment.", "data.max_overlap"))
            and key not in INFERENCE_READS and "unknown key" not in problem)


def validate(data: dict, source: str = "config", purpose: Optional[str] = None,
             base: Path = Path(".")) -> Box:
    """Check `data` against the schema and return it completed with defaults, frozen (see `freeze`).

    `purpose` ('train' or 'inference') adds checks that the files that command
    reads exist. All problems are raised together in one `UserError`.
    """
    problems: list[str] = []
    cfg = _validate_section(data, SCHEMA, "", problems)
    if purpose == "inference":  # a nonsense value in a key only training reads never blocks inference
        problems = [p for p in problems if not _training_only(p)]
    if not problems:
        _check_values(cfg, problems)
    if not problems:
        # Keys only training reads (loss, optimizer, scheduler) never block inference.
        if purpose != "inference":
            from .choices import check_component_choices  # imports torch: only when all else is right

            problems += check_component_choices(cfg)
        _check_files(cfg, purpose, base, problems)
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise UserError(f"{source}: {count}" + "; ".join(problems))
    return freeze(cfg)

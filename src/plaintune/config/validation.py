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
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

from box import Box

from plaintune import paths
from plaintune.config.choices import check_component_choices
from plaintune.config.schema import INFERENCE, LEAVES, REQUIRED, SCHEMA, Field, data_files, owning_key
from plaintune.config.yamlfile import line_of
from plaintune.errors import ConfigError, Problem


def freeze(data: dict) -> Box:
    """`data` as the config the rest of plaintune reads: attribute access, read-only (lists become tuples)."""
    return Box(data, frozen_box=True, default_box=False)


def _suggest(key: str, prefix: str, siblings: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    # Maybe it belongs in another section (e.g. training.seed -> seed).
    elsewhere = [p for p in LEAVES if p.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {elsewhere[0]}?"
    return ""


def _coerce_kind(kind: type, value: Any, choices: Optional[tuple]) -> tuple[Any, Optional[str]]:
    """(`value` converted to `kind`, None) or (`value`, the problem)."""
    if kind is float:
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


def _coerce(field: Field, value: Any, where: str, problems: list[Problem]) -> Any:
    if value is None:
        if not field.nullable:
            problems.append(Problem(where, "must not be empty/null"))
        return value
    value, problem = _coerce_kind(field.kind, value, field.choices)
    if problem is None and field.choices is not None and value not in field.choices:
        problem = f"{value!r} is not one of {', '.join(map(str, field.choices))}"
    elif problem is None and field.check is not None:
        problem = field.check(value)
    if problem:
        problems.append(Problem(where, problem))
    return value


def _validate_section(data: Any, schema: dict, prefix: str, problems: list[Problem]) -> dict:
    if not isinstance(data, dict):
        problems.append(Problem(prefix.rstrip("."), f"expected a section of keys, got {data!r}"))
        data = {}
    out = {}
    for key in data:
        if key not in schema:
            problems.append(Problem(f"{prefix}{key}", f"unknown key{_suggest(str(key), prefix, schema)}"))
    for key, spec in schema.items():
        where = f"{prefix}{key}"
        if isinstance(spec, dict):
            out[key] = _validate_section(
                data.get(key, {}) if data.get(key) is not None else {}, spec, where + ".", problems
            )
        elif key in data:
            value = data[key]
            if spec.open_keys and isinstance(value, dict) and isinstance(spec.default, dict):
                value = {**({} if "name" in value else spec.default), **value}
            out[key] = _coerce(spec, value, where, problems)
        elif spec.default is REQUIRED:
            problems.append(Problem(where, "required key is missing"))
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


def _check_values(cfg: dict, problems: list[Problem]) -> None:
    """Values that pass their type but cannot be: checks that span keys or need more than a type."""
    for section in ("model", "data", "training", "inference", "checkpoint"):
        for where in _nonfinite_leaves(cfg[section], section):
            problems.append(Problem(where, "must be a finite number, not NaN or infinity"))
    if not 0 <= cfg["seed"] < 2**32:
        problems.append(Problem("seed", f"must be between 0 and 2**32 - 1 (got {cfg['seed']})"))
    name = cfg["run_name"]
    if not RUN_NAME.fullmatch(name) or name.strip(".") == "" or name != name.strip() or len(name) > 200:
        problems.append(
            Problem(
                "run_name",
                f"{name!r} is not a plain name (no '/', '\\', '..' or control "
                "characters, at most 200 characters); runs go under output_dir, so give just a "
                "name, e.g. run_name=roberta_lr3",
            )
        )
    label_range = cfg["data"]["label_range"]
    if isinstance(label_range, list) and len(label_range) == 2 and label_range[0] == label_range[1]:
        problems.append(
            Problem("data.label_range", f"low and high are equal ({label_range}); labels need a range, e.g. [0.0, 5.0]")
        )
    if cfg["model"]["num_labels"] > 1 and cfg["training"]["metric"] in ("pearson", "spearman"):
        problems.append(
            Problem(
                "training.metric",
                f"{cfg['training']['metric']} correlates scores, but "
                f"model.num_labels is {cfg['model']['num_labels']} (classification); use "
                "accuracy, f1 or loss",
            )
        )
    columns = cfg["data"]["columns"]
    read = {key: columns[key] for key in ("id", "sentence_1", "sentence_2", "label")}
    seen: dict = {}
    for key, column in read.items():
        if column in seen:
            problems.append(
                Problem(
                    f"data.columns.{key}",
                    f"'{column}' is also data.columns.{seen[column]}; each role needs its own column",
                )
            )
        seen.setdefault(column, key)
    if columns["target"] == columns["id"]:
        problems.append(
            Problem(
                "data.columns.target",
                f"'{columns['target']}' is the id column; predictions "
                "would overwrite the ids: name the template's score column (e.g. target)",
            )
        )


def _apply_data_dir(cfg: dict) -> None:
    """Join data.dir onto the relative data paths once, then clear it: the config (and the run's saved
    config.yaml, read again by inference) holds the paths the run really reads."""
    folder = cfg["data"]["dir"]
    if folder is None:
        return
    for key in data_files():
        value = cfg["data"][key]
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            cfg["data"][key] = str(Path(folder) / value)
    cfg["data"]["dir"] = None


def _check_files(cfg: dict, purpose: Optional[str], base: Path, problems: list[Problem]) -> None:
    data = cfg["data"]
    # the files this command must find: training's (and a test file when one is set), or inference's
    required = {"train": data_files("train"), "inference": data_files("predict")}.get(purpose, ())
    optional = data_files("test") if purpose == "train" else ()
    keys = [*required, *(key for key in optional if data.get(key))]
    for key in keys:
        value = data.get(key)
        if not isinstance(value, str):
            continue
        kind, detail = paths.path_kind(base / value)
        if kind == paths.MISSING:
            relative = "" if Path(value).is_absolute() else f" (in {base.resolve()}: relative paths start there)"
            problems.append(
                Problem(
                    f"data.{key}",
                    f"file '{value}' does not exist{relative}; put your file there, set "
                    "data.dir to the folder that holds your files (data.dir=data/demo: the demo "
                    f"set), or override data.{key}=path/to/file.csv",
                )
            )
        elif kind not in (paths.FILE, paths.DENIED):  # a folder, a device, a loop: not a data file
            what = "a directory" if kind == paths.DIR else detail
            problems.append(
                Problem(
                    f"data.{key}", f"'{value}' is {what}, not a file; give the CSV file (data.{key}=path/to/file.csv)"
                )
            )


# ---------------------------------------------------------------- where values came from


class Origins:
    """Where each key's value came from, so a problem is blamed on what the user actually wrote:
    a file (with the key's line), or the keys set elsewhere (the command line, a Python call)."""

    def __init__(self, source: str, lines: Optional[dict[str, int]] = None):
        self.source = source
        self.lines = dict(lines or {})
        self.set_by: dict[str, str] = {}

    def set(self, dotted: str, origin: str) -> None:
        """`dotted` (a key or a whole section) now holds a value given by `origin`."""
        for key in [k for k in self.set_by if k == dotted or k.startswith(dotted + ".")]:
            del self.set_by[key]
        self.set_by[dotted] = origin

    def of(self, dotted: str) -> str:
        if not dotted:
            return self.source
        dotted = re.sub(r"\[\d+\]", "", dotted)  # a list element (data.label_range[1]) is its list's
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):  # the key, or a section set as a whole
            origin = self.set_by.get(".".join(parts[:end]))
            if origin is not None:
                return origin
        below = [origin for key, origin in self.set_by.items() if key.startswith(dotted + ".")]
        if below and len(set(below)) == 1 and not any(k.startswith(dotted + ".") for k in self.lines):
            return below[0]  # a section only an override wrote (a mistyped top-level key on the command line)
        line = line_of(self.lines, dotted)
        return f"{self.source}:{line}" if line is not None else self.source


# ---------------------------------------------------------------- the whole config


def _read_at_inference(problem: Problem) -> bool:
    """Whether a problem can matter to inference: its key is one inference reads, or unknown (typos
    and misplaced sections always count)."""
    key = owning_key(problem.key)
    return key is None or INFERENCE in LEAVES[key].role


def validate(
    data: dict,
    source: str = "config",
    purpose: Optional[str] = None,
    base: Path = Path("."),
    origins: Optional[Origins] = None,
) -> Box:
    """Check `data` against the schema and return it completed with defaults, frozen (see `freeze`).

    `purpose` ('train' or 'inference') adds checks that the files that command reads exist;
    inference ignores problems with keys only training reads (their roles say which). All problems
    are raised together in one `ConfigError`, each blamed on where its value came from (`origins`,
    else `source`)."""
    problems: list[Problem] = []
    cfg = _validate_section(data, SCHEMA, "", problems)
    if purpose == "inference":
        problems = [p for p in problems if _read_at_inference(p)]
    if not problems:
        _apply_data_dir(cfg)
        _check_values(cfg, problems)
    if not problems:
        if purpose != "inference":  # loss, optimizer and scheduler: only training reads them
            problems += check_component_choices(cfg)
        _check_files(cfg, purpose, base, problems)
    if problems:
        origins = origins or Origins(source)
        raise ConfigError([replace(p, origin=origins.of(p.key)) for p in problems])
    return freeze(cfg)

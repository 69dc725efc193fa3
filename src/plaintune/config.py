"""YAML config + command-line overrides -> one validated, attribute-access config.

Every problem is collected before anything heavy loads and reported at once:
unknown keys (with the nearest valid key), wrong types, bad choices, out-of-range
numbers, unknown loss/optimizer/scheduler names and their keyword arguments,
and missing data files.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from box import Box

from .errors import UserError
from .schema import REQUIRED, SCHEMA, Field

CONFIG_DIR = Path("configs")

# Which data files must exist for which command.
REQUIRED_FILES = {
    "train": ("train_path", "dev_path"),
    "inference": ("predict_path", "submission_template"),
}


def _is_sweep(path: Path) -> bool:
    """A wandb sweep spec (configs/sweep.yaml) lives beside the training configs but is not one."""
    try:
        return re.search(r"^(program|method):", path.read_text(encoding="utf-8", errors="ignore"), re.M) is not None
    except OSError:
        return False


def resolve_config_path(name: str) -> Path:
    """`NAME` is configs/NAME.yaml, or a path to a YAML file."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) or os.sep in name else []
    candidates += [CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / f"{name}.yml", Path(name)]
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not _is_sweep(p)) if CONFIG_DIR.is_dir() else []
    hint = f"; shipped configs: {', '.join(shipped)}" if shipped else ""
    raise UserError(f"config '{name}' not found (looked for {CONFIG_DIR / (name + '.yaml')} and {name}){hint}")


MAX_CONFIG_NODES = 100_000  # a real config has a few hundred; aliases can make billions ("billion laughs")


def _too_large(data: Any) -> bool:
    """Whether `data`, with every alias expanded, holds more than MAX_CONFIG_NODES values.

    PyYAML shares aliased objects, so loading is cheap, but anything that walks
    or copies the config would expand them; count with a budget instead."""
    budget = MAX_CONFIG_NODES
    stack = [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
            stack.extend(node.keys())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}:{line}: invalid YAML ({problem}); check indentation and quoting") from None
    if _too_large(data):
        raise UserError(f"{path}: the config expands to more than {MAX_CONFIG_NODES:,} values (YAML anchors and "
                        "aliases nested into each other?); write the values out")
    if data is None:
        raise UserError(f"{path}: the config is empty; start from configs/default.yaml")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys (got a {type(data).__name__}); "
                        "start from configs/default.yaml")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.epochs=3` -> (['training', 'epochs'], 3). Values are read as YAML."""
    key, sep, raw = text.lstrip("-").partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' must look like key.path=value, e.g. training.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"override '{text[:200]}': cannot parse the value '{raw[:200]}' as YAML; quote it") from None
    if _too_large(value):
        raise UserError(f"override '{key}=...': the value expands to more than {MAX_CONFIG_NODES:,} values (YAML "
                        "anchors and aliases nested into each other?); write the values out")
    return key.split("."), value


def _schema_node(path: list[str]) -> Any:
    node: Any = SCHEMA
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `key.path=value` overrides. An override naming a whole section merges a mapping
    into it (`training={epochs: 1}` keeps the other training keys); emptying a section is an error."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if isinstance(_schema_node(path), dict):
            if not isinstance(value, dict):
                raise UserError(f"override '{text}': {'.'.join(path)} is a section of keys; set one key "
                                f"({'.'.join(path)}.KEY=value) or give a mapping ({'.'.join(path)}={{KEY: value}})")
            node = data
            for part in path:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node.update(value)
            continue
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': {'.'.join(path[:i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


# ---------------------------------------------------------------- validation

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


def _coerce(field: Field, value: Any, where: str, problems: list[str]) -> Any:
    if value is None:
        if field.nullable:
            return None
        problems.append(f"{where}: must not be empty/null")
        return value
    kind = field.kind
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)  # PyYAML reads 2e-5 as a string
            except ValueError:
                problems.append(f"{where}: expected a number, got {value!r}")
                return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        value = float(value)
        if not math.isfinite(value):
            problems.append(f"{where}: must be a finite number (got {value})")
            return value
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected a whole number, got {value!r}")
            return value
    elif kind is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
            return value
    elif kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and field.choices is None:
            value = str(value)
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
            return value
        if not value.strip():
            problems.append(f"{where}: must not be an empty string")
            return value
    elif not isinstance(value, kind):
        problems.append(f"{where}: expected a {kind.__name__}, got {value!r}")
        return value
    if field.choices is not None and value not in field.choices:
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(str, field.choices))}")
    elif field.check is not None:
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


# Keys inference reads from the training and checkpoint sections; the rest there only training reads.
INFERENCE_READS = ("training.eval_batch_size", "training.precision", "training.num_workers")


def _training_only(problem: str) -> bool:
    """Whether a problem is about the value of a key that only training reads (typos still count)."""
    key = problem.split(":", 1)[0]
    return (key.startswith(("training.", "checkpoint.", "logging.", "data.augment.", "data.max_overlap"))
            and key not in INFERENCE_READS and "unknown key" not in problem)


def validate(data: dict, source: str = "config", purpose: Optional[str] = None,
             base: Path = Path(".")) -> Box:
    """Check `data` against the schema and return it completed with defaults.

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
        from .factory import check_component_choices  # torch-level names, light to import

        # Keys only training reads (loss, optimizer, scheduler) never block inference.
        if purpose != "inference":
            problems += check_component_choices(cfg)
        _check_files(cfg, purpose, base, problems)
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise UserError(f"{source}: {count}" + "; ".join(problems))
    return Box(cfg, frozen_box=False, default_box=False)


def load_config(name: str, overrides: Iterable[str] = (), purpose: Optional[str] = None) -> Box:
    """Read configs/NAME.yaml (or a path), apply `key.path=value` overrides, validate.

    A problem with a key an override set is blamed on the command line, not on the file."""
    path = resolve_config_path(name)
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return validate(data, source=str(path), purpose=purpose)
    except UserError as err:
        keys = [parse_override(text)[0] for text in overrides]
        message = str(err).removeprefix(f"{path}: ")
        count = re.match(r"\d+ problems: ", message)
        message = message[count.end():] if count else message
        parts = message.split("; ")
        blamed = []
        for part in parts:
            key = part.split(":", 1)[0].split("[")[0].strip()
            if any(key == ".".join(k) or key.startswith(".".join(k) + ".") for k in keys):
                part += " (set on the command line)"
            blamed.append(part)
        prefix = count.group(0) if count else ""
        if all(p.endswith("(set on the command line)") for p in blamed if ":" in p) and keys:
            raise UserError(f"command line (over {path}): {prefix}" + "; ".join(blamed)) from None
        raise UserError(f"{path}: {prefix}" + "; ".join(blamed)) from None


def to_plain(cfg: Box) -> dict:
    """The config as plain dicts and lists (for YAML, checkpoints and loggers)."""
    return cfg.to_dict()


def dump_yaml(cfg: Box) -> str:
    return yaml.safe_dump(to_plain(cfg), sort_keys=False, allow_unicode=True)


def reference_markdown() -> str:
    """The config reference table for the README, generated from the schema."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(schema: dict, prefix: str) -> None:
        for key, spec in schema.items():
            if isinstance(spec, dict):
                walk(spec, f"{prefix}{key}.")
                continue
            default = "(required)" if spec.default is REQUIRED else yaml.safe_dump(
                spec.default, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append(f"| `{prefix}{key}` | `{default}` | {spec.doc} |")

    walk(SCHEMA, "")
    return "\n".join(rows)


def update_readme(path: Path = Path("README.md")) -> None:
    """Replace the README's config reference block with the current table."""
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}{reference_markdown()}\n\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--update-readme"]:
        update_readme()
    else:
        print(reference_markdown())

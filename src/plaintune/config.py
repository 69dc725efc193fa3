"""Config files: find one, read its YAML safely, apply `key.path=value` overrides, load it validated.

The loaded config is a frozen Box (see validation.py): code that needs other
values builds a copy with `with_values`. `python -m plaintune.config` prints the
README's config reference (`--update-readme` rewrites it in README.md).
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from box import Box

from .errors import UserError
from .schema import REQUIRED, SCHEMA
from .validation import freeze, validate

CONFIG_DIR = Path("configs")


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


def _blame_overrides(err: UserError, path: Path, overrides: list[str]) -> UserError:
    """`err` with each problem about a key an override set marked "(set on the command line)"; when
    every problem is, the command line (not the file) is named first."""
    keys = [parse_override(text)[0] for text in overrides]
    message = str(err).removeprefix(f"{path}: ")
    count = re.match(r"\d+ problems: ", message)
    message = message[count.end():] if count else message
    blamed = []
    for part in message.split("; "):
        key = part.split(":", 1)[0].split("[")[0].strip()
        if any(key == ".".join(k) or key.startswith(".".join(k) + ".") for k in keys):
            part += " (set on the command line)"
        blamed.append(part)
    prefix = count.group(0) if count else ""
    if all(p.endswith("(set on the command line)") for p in blamed if ":" in p) and keys:
        return UserError(f"command line (over {path}): {prefix}" + "; ".join(blamed))
    return UserError(f"{path}: {prefix}" + "; ".join(blamed))


def load_config(name: str, overrides: Iterable[str] = (), purpose: Optional[str] = None) -> Box:
    """Read configs/NAME.yaml (or a path), apply `key.path=value` overrides, validate; frozen.

    A problem with a key an override set is blamed on the command line, not on the file."""
    path = resolve_config_path(name)
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return validate(data, source=str(path), purpose=purpose)
    except UserError as err:
        raise _blame_overrides(err, path, overrides) from None


def to_plain(cfg: Any) -> Any:
    """The config as plain dicts and lists (for YAML, checkpoints and loggers)."""
    if isinstance(cfg, dict):  # a Box is a dict
        return {key: to_plain(value) for key, value in cfg.items()}
    if isinstance(cfg, (list, tuple)):  # a frozen Box holds its lists as tuples
        return [to_plain(value) for value in cfg]
    return cfg


def with_values(cfg: Box, values: dict[str, Any]) -> Box:
    """A frozen copy of `cfg` with `values` set ({"data.train_path": "f.csv"}); `cfg` stays as it was.

    The values are the code's own decisions (a resolved loss, a fold's files), not user input, so
    they are not validated again."""
    plain = to_plain(cfg)
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = plain
        for section in sections:
            node = node[section]
        node[key] = value
    return freeze(plain)


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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--update-readme: cannot read '{path}' ({err.strerror}); run it in the repository's "
                        "root, where README.md is") from None
    if start not in text or end not in text:
        raise UserError(f"--update-readme: '{path}' has no config-reference block to replace")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}{reference_markdown()}\n\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    from .errors import run_cli

    if sys.argv[1:] == ["--update-readme"]:
        sys.exit(run_cli(lambda: update_readme() or 0))
    print(reference_markdown())

"""Config files: find one, read its YAML safely, apply `key.path=value` overrides, load it validated.

The loaded config is a frozen Box (see validation.py): code that needs other
values builds a copy with `with_values`. `python -m plaintune.config` prints the
config reference (`--update-docs` rewrites docs/config.md).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from box import Box

from plaintune.config import yamlfile
from plaintune.config.schema import (
    INFERENCE,
    MEANINGS,
    REQUIRED,
    SCHEMA,
    SHARED,
    Role,
    assign,
    leaves,
    lookup,
    owning_key,
)
from plaintune.config.validation import Origins, freeze, validate
from plaintune.errors import UserError, run_cli

CONFIG_DIR = Path("configs")
# The shipped configs of this checkout (src/plaintune/config/load.py -> the project root's configs/):
# a notebook started in another folder finds `default` there when its own folder has no configs/.
PROJECT_CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def _is_sweep(path: Path) -> bool:
    """A wandb sweep spec (configs/sweep.yaml) lives beside the training configs but is not one."""
    try:
        return re.search(r"^(program|method):", path.read_text(encoding="utf-8", errors="ignore"), re.M) is not None
    except OSError:
        return False


def resolve_config_path(name: str) -> Path:
    """`NAME` is configs/NAME.yaml (in the working directory, else the project's configs/), or a path
    to a YAML file."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) or os.sep in name else []
    folders = [CONFIG_DIR] + ([PROJECT_CONFIG_DIR] if PROJECT_CONFIG_DIR.resolve() != CONFIG_DIR.resolve() else [])
    candidates += [folder / f"{name}{suffix}" for folder in folders for suffix in (".yaml", ".yml")] + [Path(name)]
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(
        {p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml") if not _is_sweep(p)}
    )
    hint = f"; shipped configs: {', '.join(shipped)}" if shipped else ""
    looked = " and ".join(str(folder / f"{name}.yaml") for folder in folders)
    raise UserError(
        f"config '{name}' not found (looked for {looked} and {name}){hint}; give a path to your YAML file, or "
        "start from a shipped one"
    )


def read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """A config file's mapping and the line of each key in it (duplicate keys refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    data, lines = yamlfile.parse(text, str(path))
    if data is None:
        raise UserError(f"{path}: the config is empty; start from configs/default.yaml")
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: the top level must be a mapping of keys (got a {type(data).__name__}); "
            "start from configs/default.yaml"
        )
    return data, lines


def parse_override(text: str) -> tuple[str, Any]:
    """`training.epochs=3` -> ('training.epochs', 3). Values are read as YAML."""
    key, sep, raw = text.lstrip("-").partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' must look like key.path=value, e.g. training.epochs=3")
    try:
        value = yamlfile.load_value(raw, f"override '{key}=...'", key) if raw.strip() else None
    except yamlfile.InvalidYaml:
        raise UserError(f"override '{text[:200]}': cannot parse the value '{raw[:200]}' as YAML; quote it") from None
    return key, value


def _leaves_of(key: str, value: Any) -> list[str]:
    """The dotted keys a value set at `key` sets: itself, or each key of a mapping given for a section."""
    if isinstance(value, dict) and isinstance(lookup(SCHEMA, key), dict):
        return [leaf for k, v in value.items() for leaf in _leaves_of(f"{key}.{k}", v)]
    return [key]


def overridden_keys(overrides: Iterable[str]) -> list[str]:
    """The schema keys `overrides` set (a section given as a mapping sets each of its keys)."""
    keys = []
    for text in overrides:
        key, value = parse_override(text)
        keys += [owning for leaf in _leaves_of(key, value) if (owning := owning_key(leaf))]
    return keys


def apply_overrides(
    data: dict, overrides: Iterable[str], origins: Optional[Origins] = None, origin: str = "command line"
) -> dict:
    """Apply `key.path=value` overrides, noting in `origins` that `origin` set each key. An override
    naming a whole section merges a mapping into it (`training={epochs: 1}` keeps the other training
    keys); emptying a section is an error. A key given twice takes the later value, as on any command
    line (a key written twice inside one override's YAML mapping is an error, as in a file)."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(lookup(SCHEMA, key), dict):
            if not isinstance(value, dict):
                raise UserError(
                    f"{origin}: override '{text}': {key} is a section of keys; set one key "
                    f"({key}.KEY=value) or give a mapping ({key}={{KEY: value}})"
                )
            value = {**(lookup(data, key) if isinstance(lookup(data, key), dict) else {}), **value}
        parts = key.split(".")
        for end in range(1, len(parts)):
            above = lookup(data, ".".join(parts[:end]))
            if above is not None and not isinstance(above, dict):
                raise UserError(f"{origin}: override '{text}': {'.'.join(parts[:end])} is not a section")
        assign(data, key, value)
        if origins is not None:
            origins.set(key, origin)
    return data


def load_config(
    name: str, overrides: Iterable[str] = (), purpose: Optional[str] = None, origin: str = "command line"
) -> Box:
    """Read configs/NAME.yaml (or a path), apply `key.path=value` overrides, validate; frozen.

    A problem is blamed on where its value came from: the file and the key's line, or `origin`
    (the command line, or a Python call) for a key an override set."""
    path = resolve_config_path(name)
    data, lines = read_yaml(path)
    origins = Origins(str(path), lines)
    return validate(
        apply_overrides(data, overrides, origins, origin), source=str(path), purpose=purpose, origins=origins
    )


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
        assign(plain, dotted, value)
    return freeze(plain)


def dump_yaml(cfg: Box) -> str:
    return yamlfile.dump(to_plain(cfg))


def role_label(role: Role) -> str:
    """A key's role as the reference shows it: its meaning first, then inference/shared."""
    return ", ".join(flag.name.lower() for flag in (*MEANINGS, INFERENCE, SHARED) if flag in role)


def reference_markdown() -> str:
    """The config reference table (key, role, default, meaning), generated from the schema."""
    rows = ["| key | role | default | meaning |", "|---|---|---|---|"]
    for key, spec in leaves():
        default = (
            "(required)"
            if spec.default is REQUIRED
            else yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix("...").strip()
        )
        rows.append(f"| `{key}` | {role_label(spec.role)} | `{default}` | {spec.doc} |")
    return "\n".join(rows)


REFERENCE_PAGE = Path("docs") / "config.md"
REFERENCE_INTRO = """\
# Config reference

Generated from `src/plaintune/config/schema.py` by `python -m plaintune.config --update-docs`; do not edit by
hand (`tests/test_config.py` fails when this page and the schema differ).

A config is one YAML file (`configs/NAME.yaml`, or any path) plus `key.path=value` overrides on the
command line or as strings to `plaintune.train(...)`. Unknown keys, wrong types, out-of-range values and
a key written twice in one YAML mapping are errors, all reported at once with the file and line (or the
command line, or the Python call) they came from. `2e-5`, which YAML reads as a string, is the number.

The role says what changing a key means:

| role | changing it... |
|---|---|
| identity | makes another run: `--resume` refuses it (`--force` continues anyway); a finished fold trains again |
| recipe | shapes what is learned; `--resume` continues with a note; a finished fold trains again |
| prediction | how a trained model predicts: a finished fold predicts its held-out part again, without training |
| runtime | where or how the work runs and is written; nothing learned or predicted changes |
| inference | (added to one of the above) inference reads it, so a problem with its value blocks inference too |
| shared | (added) belongs to the whole leaderboard config: an ensemble member may not set it |

`training.optimizer` and `training.scheduler` take `name` plus keyword arguments of that optimizer or
scheduler; an unknown argument is an error that lists the valid ones.

"""


def reference_page() -> str:
    """The whole of docs/config.md."""
    return f"{REFERENCE_INTRO}{reference_markdown()}\n"


def update_reference(path: Path = REFERENCE_PAGE) -> None:
    """Rewrite docs/config.md from the schema."""
    if not path.parent.is_dir():
        raise UserError(
            f"--update-docs: there is no '{path.parent}' folder here; run it in the repository's root, where docs/ is"
        )
    path.write_text(reference_page(), encoding="utf-8")


def main(argv: Optional[list] = None) -> int:
    """`python -m plaintune.config`: print the config reference table; `--update-docs` rewrites
    docs/config.md."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["--update-docs"]:
        return run_cli(lambda: update_reference() or 0)
    if args:
        return run_cli(lambda: _unknown_arguments(args))
    return run_cli(lambda: print(reference_markdown()) or 0)


def _unknown_arguments(args: list) -> int:
    raise UserError(
        f"python -m plaintune.config: unknown arguments {' '.join(args)}; run it without arguments "
        "to print the config reference, or with --update-docs to rewrite docs/config.md"
    )

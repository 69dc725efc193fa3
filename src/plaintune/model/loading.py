"""The `model` config section -> tokenizer, model config and model, checked before anything trains;
then what is done to a built model: freezing, the head's initial bias.

Config overrides are checked against the model's own field types and built on
the meta device first, so a bad value is reported by its key, not by torch.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import nn

from plaintune.errors import UserError
from plaintune.model.architecture import (
    Architecture,
    check_max_length,
    check_tokenizer,
    read_architecture,
    transformer_of,
)
from plaintune.model.biencoder import BiEncoder, base_normalizes
from plaintune.model.hub import (
    PACKAGED_ADVICE,
    first_line,
    is_load_failure,
    load_error,
    quiet_transformers,
    resolve_model_source,
)
from plaintune.weights import formats


def build_tokenizer(model_spec: dict, architecture: Optional[Architecture] = None, advice: str = PACKAGED_ADVICE):
    """The tokenizer of model.name; given the model's Architecture, it returns exactly the inputs that
    model takes (and is saved that way with best/, for every later reader of the export)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"], advice)
    extra = {"model_input_names": architecture.input_names()} if architecture is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline, **extra)
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source, advice) from None
    borrow_pad_token(tokenizer)
    return tokenizer


def borrow_pad_token(tokenizer) -> Optional[str]:
    """A tokenizer without a padding token (GPT-2 and other decoders) pads with its end-of-sequence
    token, as sentence-transformers does; the choice is saved with best/, so every later reader pads
    the same way. Returns the token borrowed (None: nothing to do, or nothing to borrow, which
    check_tokenizer refuses)."""
    if tokenizer.pad_token is not None or tokenizer.eos_token is None:
        return None
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.plaintune_borrowed_pad = tokenizer.eos_token
    return tokenizer.eos_token


def adopt_pad_token_id(config, tokenizer) -> None:
    """A model config without a pad_token_id takes the tokenizer's: a decoder's classification head
    (GPT-2, Llama, Qwen ...) finds each row's last real token by it, and refuses batches without it."""
    if getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        try:
            config.pad_token_id = tokenizer.pad_token_id
        except (AttributeError, TypeError, ValueError):  # a config without the field: its model never reads it
            pass


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


class ModelConfig(NamedTuple):
    config: Any  # the HF config with overrides, dropout and labels applied
    source: str  # where the model is read from (a directory, or a hub id)
    offline: bool  # local_files_only
    architecture: Architecture  # what the model takes, read off it built on the meta device
    advice: str = PACKAGED_ADVICE  # the last way out a load error offers (fitted to the data's language)


def build_model_config(model_spec: dict, advice: str = PACKAGED_ADVICE) -> ModelConfig:
    """The model's config, checked: built on the meta device (which allocates nothing), so a bad
    override, a max_length beyond the position table and the model's inputs are known before any
    weights load or any text is tokenized."""
    from transformers import AutoConfig

    quiet_transformers()
    source, offline = resolve_model_source(model_spec["name"], advice)
    if Path(source).is_dir():  # a damaged config.json is named as such, before transformers guesses
        formats.check_model_config(Path(source) / "config.json")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise load_error(model_spec["name"], offline, err, source, advice) from None
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
    architecture = _architecture(config, overrides, model_spec.get("kind"))
    check_max_length(architecture, model_spec.get("max_length"))
    return ModelConfig(config, source, offline, architecture, advice)


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
        raise UserError(
            f"model.config_overrides.{key}: expected {expected} (like the model's {current!r}), got {value!r}"
        )
    if expected == "a whole number" and COUNT_FIELD.search(key) and current >= 1 and value < 1:
        raise UserError(f"model.config_overrides.{key}: must be >= 1 (got {value})")
    return value


def _architecture(config, overrides: Mapping, kind: Optional[str]) -> Architecture:
    """The model built on the meta device and read. transformers checks an architecture only while
    building it (hidden_size divisible by num_attention_heads, a known hidden_act ...): a bad
    combination of overrides is reported by its config key before anything loads."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            if kind == "bi_encoder":
                model = BiEncoder(AutoModel.from_config(config, **_pooling_flag(config)))
            else:
                model = AutoModelForSequenceClassification.from_config(config)
    except Exception as err:  # noqa: BLE001 - the same config builds without the overrides
        if not overrides:
            raise
        values = ", ".join(f"{k}: {v!r}" for k, v in overrides.items())
        raise UserError(
            f"model.config_overrides: transformers cannot build a {config.model_type} model with "
            f"{{{values}}} ({type(err).__name__}: {first_line(err)}); change these values"
        ) from None
    return read_architecture(model)


def _pooling_flag(config) -> dict:
    """Encoders that build a pooler the bi-encoder never uses (BERT, RoBERTa, XLM-R, ALBERT, MPNet ...)
    take add_pooling_layer: read off the class. An unused pooler would also stop DDP (parameters
    that get no gradient)."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(config)]
    takes_flag = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if takes_flag else {}


def _build_bi_encoder(model_spec: dict, prepared: ModelConfig, pretrained: bool) -> nn.Module:
    from transformers import AutoModel

    config, source, offline = prepared.config, prepared.source, prepared.offline
    extra = _pooling_flag(config)
    settings = {
        "max_seq_length": model_spec.get("max_length"),
        "normalize": base_normalizes(source),
        "prompt": model_spec.get("prompt") or "",
    }
    if not pretrained:
        return BiEncoder(AutoModel.from_config(config, **extra), **settings)
    try:
        return BiEncoder(
            AutoModel.from_pretrained(source, config=config, local_files_only=offline, **extra), **settings
        )
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source, prepared.advice) from None


def build_model(
    model_spec: dict, pretrained: Optional[bool] = None, prepared: Optional[ModelConfig] = None
) -> nn.Module:
    """The sequence-classification model named by `model.name` (a BiEncoder for model.kind: bi_encoder).

    With pretrained weights, tensors the checkpoint lacks (a fresh head) are initialised randomly
    and reported on stdout; tensors of another shape start fresh only where model.allow_missing
    allows. `model.plaintune_fresh_keys` names every tensor that did not come from the checkpoint.
    """
    from transformers import AutoModelForSequenceClassification

    prepared = prepared or build_model_config(model_spec)
    config, source, offline = prepared.config, prepared.source, prepared.offline
    if pretrained is None:
        pretrained = not model_spec.get("from_scratch", False)
    if model_spec.get("kind") == "bi_encoder":
        return _build_bi_encoder(model_spec, prepared, pretrained)
    if not pretrained:
        return AutoModelForSequenceClassification.from_config(config)
    try:
        # Mismatched shapes load as fresh tensors here and are checked against allow_missing below.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, local_files_only=offline, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except Exception as err:
        if not is_load_failure(source, err):
            raise
        raise load_error(model_spec["name"], offline, err, source, prepared.advice) from None
    fresh = sorted(info.get("missing_keys", []))
    if fresh:
        print(f"model: {len(fresh)} tensors not in the pretrained weights, initialised fresh: {', '.join(fresh)}")
    mismatched = sorted(str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys", []))
    allowed = model_spec.get("allow_missing") or []
    refused = [k for k in mismatched if not any(fnmatch.fnmatchcase(k, g) for g in allowed)]
    if refused:
        raise UserError(
            f"model.name: '{model_spec['name']}' holds {', '.join(refused)} in another shape than "
            f"this model (model.num_labels={model_spec['num_labels']}); to start them fresh, set "
            f'model.allow_missing (e.g. ["classifier.*"])'
        )
    if mismatched:
        print(f"model: {len(mismatched)} tensors of another shape, initialised fresh: {', '.join(mismatched)}")
    model.plaintune_fresh_keys = set(fresh) | set(mismatched)  # what did not come from the checkpoint
    return model


# ------------------------------------------------ after the weights are in place


def check_tokenizer_fits(architecture: Architecture, tokenizer, model_spec: Mapping, where: str = "model.name") -> None:
    """The tokenizer's ids fit the model (architecture.check_tokenizer), blamed on what set them: the
    vocab_size override, else `where` (model.name, or the checkpoint inference reads)."""
    overrides = model_spec.get("config_overrides") or {}
    check_tokenizer(
        architecture, tokenizer, "model.config_overrides.vocab_size" if "vocab_size" in overrides else where
    )


def apply_freeze(
    model: torch.nn.Module, freeze: Sequence[str], unfreeze: Sequence[str], word_embeddings: bool = False
) -> tuple[int, int]:
    """Set requires_grad by globs, and with `word_embeddings` freeze the token embedding table (found as
    the model's input embeddings, so no family's parameter name is needed); return (trainable, frozen)
    parameter counts."""
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
    if word_embeddings:
        table = transformer_of(model).get_input_embeddings().weight
        name = next(n for n, p in model.named_parameters() if p is table)
        reopened = [p for p in unfreeze if fnmatch.fnmatchcase(name, p)]
        if reopened:
            raise UserError(
                f"model.unfreeze: '{reopened[0]}' re-opens {name}, which model.freeze_word_embeddings: true "
                "freezes; drop one of the two"
            )
        table.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if trainable == 0:
        raise UserError(
            f"model.freeze: {list(freeze)} freezes every parameter, so nothing would train; narrow it, "
            f'or re-open some with model.unfreeze (e.g. ["{names[-1]}"])'
        )
    return trainable, frozen


def init_head_bias(model: torch.nn.Module, value: float) -> bool:
    """Set the bias of a freshly initialised head's output layer (the last 1-element bias outside
    the base model). A head that came trained with the weights is left alone. Returns whether set."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    biases = [
        (n, p)
        for n, p in model.named_parameters()
        if not n.startswith(prefix) and n.endswith("bias") and p.shape == (1,)
    ]
    fresh = getattr(model, "plaintune_fresh_keys", None)  # None: built from scratch, all fresh
    if not biases or (fresh is not None and biases[-1][0] not in fresh):
        return False
    with torch.no_grad():
        biases[-1][1].fill_(value)
    return True

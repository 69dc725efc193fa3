"""What a model is fed and what it can hold, read off the built model, never off its tokenizer's habits.

A tokenizer returns what its own family usually takes. KLUE-RoBERTa ships a BERT WordPiece tokenizer
that returns segment ids 0/1 for a pair, while the model has a single token type: id 1 indexes past its
table (an IndexError on the CPU, a "device-side assert" on a GPU, at the first step). So the inputs are
decided once per model from the model itself, built on the meta device (no memory, no weights) before
anything is tokenized, and the tokenizer is then asked for exactly those inputs (and saved that way
with best/, so every later reader of the export feeds the model the same).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from plaintune.errors import UserError

TOKEN_TYPES = "token_type_ids"


@dataclass(frozen=True)
class Architecture:
    """The facts about a built model that decide what it may be fed."""

    model_type: str
    token_type_ids: bool  # forward takes segment ids, and the model has a row for each side of a pair
    vocab_rows: Optional[int]  # rows of the token embedding table: an id at or beyond it fails
    positions: Optional[int]  # longest input the position table holds; None: relative positions only
    padding_idx: Optional[int]  # the token id a fairseq-style position table counts as padding (RoBERTa, MPNet)
    checkpointing: str  # gradient checkpointing: "transformers" (its switch), "layers" (ours), "" (none)

    def input_names(self) -> list[str]:
        """The tokenizer outputs this model takes (a tokenizer's `model_input_names`)."""
        return ["input_ids", *([TOKEN_TYPES] if self.token_type_ids else []), "attention_mask"]


def transformer_of(model: nn.Module) -> nn.Module:
    """The Hugging Face model a batch goes to: the classification model itself, or a BiEncoder's encoder."""
    inner = getattr(model, "encoder", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "base_model_prefix") else model


def encoder_layers(encoder: nn.Module) -> Optional[nn.ModuleList]:
    """The stack of transformer blocks (encoder.layer, ALBERT's shared groups, DistilBERT's transformer.layer)."""
    for owner_name in ("encoder", "transformer"):
        owner = getattr(encoder, owner_name, None)
        if isinstance(owner, nn.Module):
            for child in owner.children():
                if isinstance(child, nn.ModuleList) and len(child) > 0:
                    return child
    return None


def read_architecture(model: nn.Module) -> Architecture:
    """The Architecture of a built model (on the meta device or real), cross-encoder or BiEncoder."""
    called = transformer_of(model)
    encoder = called.base_model
    config = encoder.config
    takes_types = TOKEN_TYPES in inspect.signature(called.forward).parameters
    type_rows = getattr(config, "type_vocab_size", None)
    token_types = takes_types and (not isinstance(type_rows, int) or type_rows >= 2)
    embeddings = called.get_input_embeddings()
    vocab_rows = (
        embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else getattr(config, "vocab_size", None)
    )
    positions, padding_idx = _position_table(encoder, config)
    if getattr(called, "supports_gradient_checkpointing", False):
        checkpointing = "transformers"
    else:
        checkpointing = "layers" if encoder_layers(encoder) is not None else ""
    return Architecture(
        str(getattr(config, "model_type", "")), token_types, vocab_rows, positions, padding_idx, checkpointing
    )


def _position_table(encoder: nn.Module, config) -> tuple[Optional[int], Optional[int]]:
    """(usable positions, the padding index of a fairseq-style table), read off the embedding module."""
    table = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    if isinstance(table, nn.Embedding):
        # fairseq's layout (RoBERTa, XLM-R, MPNet): positions start after the padding index, so
        # 514 rows hold 512 tokens
        if table.padding_idx is not None:
            return table.num_embeddings - table.padding_idx - 1, table.padding_idx
        return table.num_embeddings, None
    if hasattr(getattr(encoder, "embeddings", None), "position_embeddings"):
        return None, None  # an attribute set to None: relative positions only (DeBERTa-v2/v3)
    rows = getattr(config, "max_position_embeddings", None)  # no readable table: trust the config
    return (rows if isinstance(rows, int) and not isinstance(rows, bool) else None), None


def check_max_length(architecture: Architecture, max_length: Optional[int]) -> None:
    """model.max_length beyond the position table fails mid-training on the first long pair."""
    if max_length is not None and architecture.positions is not None and max_length > architecture.positions:
        raise UserError(
            f"model.max_length: {max_length} exceeds the model's {architecture.positions} positions; "
            f"set model.max_length <= {architecture.positions}"
        )


def check_tokenizer(architecture: Architecture, tokenizer, where: str = "model.name") -> None:
    """Refuse a tokenizer whose ids the model cannot take, before anything trains or predicts:
    what would otherwise surface as an IndexError (or a device-side assert) in the middle of a run."""
    rows, size = architecture.vocab_rows, len(tokenizer)
    if isinstance(rows, int) and rows < size:
        raise UserError(
            f"{where}: the model has {rows} token embeddings but its tokenizer has {size} tokens; "
            "ids beyond the table would crash: use the model's own vocabulary size or tokenizer"
        )
    pad = tokenizer.pad_token_id
    if pad is None:
        raise UserError(
            f"{where}: the tokenizer has no padding token (and no end-of-sequence token to pad with), so "
            "pairs of different lengths cannot be batched; give it one (tokenizer.pad_token = ...; "
            "tokenizer.save_pretrained(folder)) or use the model's own tokenizer"
        )
    if isinstance(rows, int) and pad >= rows:
        raise UserError(
            f"{where}: the tokenizer pads with id {pad} ({tokenizer.pad_token!r}), beyond the model's "
            f"{rows} token embeddings; use the model's own tokenizer"
        )
    if architecture.padding_idx is not None and pad != architecture.padding_idx:
        # such a model numbers positions by counting the tokens that are not its padding id
        raise UserError(
            f"{where}: the tokenizer pads with id {pad} ({tokenizer.pad_token!r}) but this "
            f"{architecture.model_type} model counts id {architecture.padding_idx} as padding when it "
            "numbers positions; use the model's own tokenizer, or a model whose pad_token_id is "
            f"{pad} (model.config_overrides.pad_token_id={pad} when training from scratch)"
        )


def enable_gradient_checkpointing(model: nn.Module) -> str:
    """Recompute each transformer block's activations in the backward pass instead of keeping them
    (training.gradient_checkpointing): the memory of a step's activations shrinks to about one block's,
    for about one more forward pass of time. Returns how it was done, for the run's log.

    transformers' own switch where the model has one; MPNet and ALBERT have none in transformers, so
    there each block of the encoder's stack is wrapped in torch's checkpoint (the same recomputation,
    done by us). Non-reentrant in both: it works with frozen embeddings, DDP and torch.compile, and
    it replays the dropout RNG, so a step's result does not change."""
    called = transformer_of(model)
    how = read_architecture(model).checkpointing
    if how == "transformers":
        # transformers 5.x renamed the switch (the old name warns that it goes in v6)
        if hasattr(called, "activation_checkpointing_enable"):
            called.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            called.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return "transformers' activation checkpointing"
    if how == "layers":
        for block in encoder_layers(called.base_model):
            block.__class__ = _checkpointed_class(type(block))
        return "each encoder block checkpointed (transformers has no switch for this model)"
    raise UserError(
        f"training.gradient_checkpointing: a {read_architecture(model).model_type or 'model of this'} "
        "model has neither transformers' switch nor a stack of encoder blocks to checkpoint; set "
        "training.gradient_checkpointing=false"
    )


@functools.cache
def _checkpointed_class(block_class: type) -> type:
    """`block_class` with a forward that is checkpointed while training. A subclass swapped in as the
    block's class, not a wrapper module or a per-instance forward: the state-dict keys stay the
    model's own, and a copy of the model (the EMA's average) checkpoints its own blocks."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super(subclass, self).forward, *args, use_reentrant=False, **kwargs)
        return super(subclass, self).forward(*args, **kwargs)

    subclass = type(f"Checkpointed{block_class.__name__}", (block_class,), {"forward": forward})
    return subclass

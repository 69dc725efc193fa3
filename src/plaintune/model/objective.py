"""What the model's logits mean: the training loss, and the predictions that metrics and submissions use.

Regression heads can work in "unit" space: labels in `label_range` are scaled
to 0-1, the logit goes through a sigmoid, and predictions are mapped back to
the label range. A fresh head learns this far faster than raw 0-5 regression
(the sigmoid bounds the output, and BCE gives well-scaled gradients).

Which mapping a head gets follows where it came from (`resolve_objective`): a
plaintune checkpoint's recorded one, raw output for anyone else's, sigmoid for
a head plaintune starts fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from box import Box

from plaintune.errors import UserError
from plaintune.recipe.optim import BATCH_LOSSES, build_loss, canonical_loss
from plaintune.weights import formats
from plaintune.weights import record as saved_record


class Objective:
    def __init__(
        self,
        num_labels: int,
        loss: str,
        activation: str = "none",
        label_range: Optional[Sequence[float]] = (0.0, 5.0),
        kind: str = "cross_encoder",
        resolved: Optional[dict] = None,
    ):
        self.kind = kind
        # the config values `auto` resolved to for this head ({dotted key: value}), which a run records
        # beside its config (training/derived.py)
        self.resolved = dict(resolved or {})
        self.num_labels = num_labels
        self.loss_name = canonical_loss(loss)
        self.activation = activation if num_labels == 1 else "none"
        low, high = label_range if label_range is not None else (0.0, 1.0)
        self.low, self.span = float(low), float(high) - float(low)
        self.loss_fn = None if self.loss_name == "bce" else build_loss(loss)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def describe(self) -> dict:
        """What inference needs to turn logits into scores (saved with the model)."""
        return {"activation": self.activation, "low": self.low, "high": self.low + self.span, "kind": self.kind}

    def stamp(self, model_config, inputs: dict) -> None:
        """Record the mapping in the model's config (config.json of best/): `plaintune_output` for
        plaintune's inference, with `inputs` (PairEncoding.record(): the max_length, segment ids and
        prompt the model was trained with, which inference uses too), and for a cross-encoder the
        activation sentence-transformers' CrossEncoder applies, so that CrossEncoder(best).predict()
        * span + low is this score (sigmoid), or the score itself (raw output)."""
        saved_record.write(model_config, self.describe(), inputs)
        if self.kind == "cross_encoder" and self.regression:
            activation = (
                "torch.nn.modules.activation.Sigmoid"
                if self.activation == "sigmoid"
                else "torch.nn.modules.linear.Identity"
            )
            model_config.sentence_transformers = {"activation_fn": activation}

    @classmethod
    def from_saved(cls, saved: dict, num_labels: int, loss: str) -> "Objective":
        return cls(
            num_labels,
            loss,
            saved.get("activation", "none"),
            (saved["low"], saved["high"]),
            saved.get("kind", "cross_encoder"),
        )

    def to_unit(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels - self.low) / self.span

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.regression:
            return self.loss_fn(logits, labels.long())
        logits = logits.squeeze(-1)
        if self.activation == "sigmoid":
            target = self.to_unit(labels)
            if self.loss_name == "bce":
                return F.binary_cross_entropy_with_logits(logits, target)
            return self.loss_fn(torch.sigmoid(logits), target)
        if self.activation == "cosine":  # SBERT's CosineSimilarityLoss: the cosine regresses the unit label
            return self.loss_fn(logits, self.to_unit(labels))
        return self.loss_fn(logits, labels)

    def dev_loss(self, logits: torch.Tensor, labels: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """The loss over a whole evaluation set. A loss over the pairs of a batch (cosent) is
        averaged over consecutive chunks of `chunk` pairs: over the whole set at once it would
        need memory and time quadratic in the set's size."""
        if self.loss_name not in BATCH_LOSSES or len(labels) <= chunk:
            return self.loss(logits, labels)
        losses = [self.loss(logits[i : i + chunk], labels[i : i + chunk]) for i in range(0, len(labels), chunk)]
        return torch.stack(losses).mean()

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Scores in the label range (regression) or class ids (classification)."""
        if not self.regression:
            return logits.argmax(axis=-1)
        if self.activation == "sigmoid":
            return self.low + self.span / (1.0 + np.exp(-logits.astype(np.float64)))
        if self.activation == "cosine":
            return self.low + self.span * logits.astype(np.float64)
        return logits

    def initial_bias(self, mean_label: float) -> float:
        """Head bias that makes a fresh head predict the mean training label."""
        if self.activation == "sigmoid":
            unit = min(max((mean_label - self.low) / self.span, 1e-3), 1 - 1e-3)
            return float(np.log(unit / (1 - unit)))
        return float(mean_label)


# ------------------------------------------------------------- output mapping
# A checkpoint's head was trained with some mapping from its output to a score. plaintune
# records it (weights/record.py: config.json, the config in a resume bundle); a model from
# anywhere else has no record, and its output is taken raw, as transformers gives it. The
# config's `auto` never reinterprets someone else's head.


def choose_activation(
    requested: str, record: Optional[dict], head_fresh: bool, has_range: bool, record_wins: bool
) -> tuple[str, str]:
    """(activation, why) for a regression head.

    `requested` is model.output_activation (auto, none or sigmoid); `record` the checkpoint's
    plaintune record (None for a foreign head); `head_fresh` whether the head starts untrained.
    `record_wins`: at inference a plaintune checkpoint's own mapping beats the config.
    """
    if record is not None and not head_fresh and (record_wins or requested == "auto"):
        why = "recorded by plaintune with the checkpoint"
        if requested not in ("auto", record["activation"]) and record["activation"] != "cosine":
            why += f"; the config's model.output_activation={requested} is ignored for it"
        return record["activation"], why
    if requested != "auto":
        return requested, f"model.output_activation={requested} in the config"
    if head_fresh:
        if has_range:
            return "sigmoid", "a fresh head: sigmoid scaled to data.label_range"
        return "none", "a fresh head, and data.label_range is null"
    return "none", (
        "the checkpoint has no plaintune record of its output mapping, so its raw output is used as "
        "transformers gives it; set model.output_activation=sigmoid if it was trained that way"
    )


def choose_loss(requested: str, activation: str, num_labels: int) -> str:
    """training.loss, with auto resolved for the chosen head mapping."""

    if num_labels > 1:
        return "CrossEntropyLoss" if requested == "auto" else requested
    if requested == "auto":
        return "bce" if activation == "sigmoid" else "mse"
    if canonical_loss(requested) == "bce" and activation != "sigmoid":
        raise UserError(
            f"training.loss: {requested} needs a sigmoid head, but the output mapping is {activation} "
            "(see the 'output mapping' line above); use training.loss=auto or mse, or set "
            "model.output_activation=sigmoid"
        )
    return requested


# ------------------------------------------- which mapping a checkpoint's head gets


def head_is_fresh(model: torch.nn.Module, fresh_keys: Optional[set]) -> bool:
    """Whether any tensor outside the base model (the task head) starts untrained.
    `fresh_keys` None means every tensor is fresh (a model built from scratch)."""
    if fresh_keys is None:
        return True
    prefix = (getattr(model, "base_model_prefix", "") or "") + "."
    return any(name in fresh_keys for name in model.state_dict() if not name.startswith(prefix))


def resolve_objective(
    cfg: Box,
    record: Optional[dict],
    head_fresh: bool,
    record_wins: bool,
    announce: bool = True,
    kind: Optional[str] = None,
) -> Objective:
    """The Objective for this run or checkpoint (of model kind `kind`, else model.kind), holding what
    the config's `auto` resolved to (Objective.resolved); prints one line saying why."""
    num_labels = cfg.model.num_labels
    kind = kind or cfg.model.kind
    resolved = {}
    if record is not None and record.get("kind", "cross_encoder") != kind:
        record = None  # a record of another model kind says nothing about this model's head
    if kind == "bi_encoder":
        activation, why, kind = "cosine", "the bi-encoder's cosine, scaled to the label range", "bi_encoder"
    elif num_labels > 1:
        activation, why, kind = "none", "classification: the class with the highest logit", "cross_encoder"
    else:
        activation, why = choose_activation(
            cfg.model.output_activation, record, head_fresh, cfg.data.label_range is not None, record_wins
        )
        kind = "cross_encoder"
        if activation == "sigmoid" and cfg.data.label_range is None and record is None:
            raise UserError(
                "model.output_activation: sigmoid maps the head to data.label_range, which is null; "
                "set data.label_range (e.g. [0.0, 5.0])"
            )
        resolved["model.output_activation"] = activation
    from_record = record is not None and activation == record.get("activation") and not head_fresh
    label_range = (record["low"], record["high"]) if from_record else cfg.data.label_range
    if record_wins:  # inference: the loss is never used
        loss = "crossentropy" if num_labels > 1 else "mse"
    else:
        loss = choose_loss(cfg.training.loss, activation, num_labels)
        resolved["training.loss"] = loss
    if announce and num_labels == 1:
        print(f"output mapping: {activation} ({why})")
    return Objective(num_labels, loss, activation, label_range, kind=kind, resolved=resolved)


def objective_for(model: torch.nn.Module, cfg: Box, source: Optional[Path] = None, announce: bool = True) -> Objective:
    """How to read this checkpoint's outputs: as plaintune recorded them, whatever the config says;
    for a checkpoint plaintune did not write, raw unless the config sets model.output_activation."""
    record = formats.read_record(source) if source is not None and not source.is_dir() else None
    # A file's record is its own (or its HF directory's); model.config came from model.name then,
    # and model.name's record says nothing about someone else's weights.
    if source is None or source.is_dir():
        where = f"{source / 'config.json'}" if source is not None else "the checkpoint's config.json"
        record = saved_record.of_config(model.config, where)
    kind = record.get("kind", "cross_encoder") if record is not None else None  # the model was built as its kind
    return resolve_objective(cfg, record, head_fresh=False, record_wins=True, announce=announce, kind=kind)

"""What the model's logits mean: the training loss, and the predictions that metrics and submissions use.

Regression heads can work in "unit" space: labels in `label_range` are scaled
to 0-1, the logit goes through a sigmoid, and predictions are mapped back to
the label range. A fresh head learns this far faster than raw 0-5 regression
(the sigmoid bounds the output, and BCE gives well-scaled gradients).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .optim import build_loss, canonical_loss

ACTIVATIONS = ("none", "sigmoid", "cosine")  # cosine: the bi-encoder's similarity in [-1, 1]
CONFIG_ATTRIBUTE = "plaintune_output"  # stored in the HF config.json of saved models


class Objective:
    def __init__(self, num_labels: int, loss: str, activation: str = "none",
                 label_range: Optional[Sequence[float]] = (0.0, 5.0), kind: str = "cross_encoder"):
        self.kind = kind
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

    @classmethod
    def from_saved(cls, saved: dict, num_labels: int, loss: str) -> "Objective":
        return cls(num_labels, loss, saved.get("activation", "none"), (saved["low"], saved["high"]),
                   saved.get("kind", "cross_encoder"))

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
# records it (CONFIG_ATTRIBUTE in config.json, the config in a resume bundle); a model from
# anywhere else has no record, and its output is taken raw, as transformers gives it. The
# config's `auto` never reinterprets someone else's head.

def parse_record(record: object, where: str) -> Optional[dict]:
    """A plaintune output record, checked; None when there is none."""
    from .errors import UserError

    if record is None:
        return None
    ok = isinstance(record, dict) and record.get("activation") in ACTIVATIONS
    if ok:
        low, high = record.get("low", 0.0), record.get("high", 1.0)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (low, high)) \
            and low < high and record.get("kind", "cross_encoder") in ("cross_encoder", "bi_encoder")
    if not ok:
        raise UserError(f"{where}: '{CONFIG_ATTRIBUTE}' is malformed ({record!r}); expected {{activation: "
                        f"none|sigmoid|cosine, low: number, high: larger number, kind: cross_encoder|bi_encoder}}: "
                        "fix or remove it")
    return record


def choose_activation(requested: str, record: Optional[dict], head_fresh: bool, has_range: bool,
                      record_wins: bool) -> tuple[str, str]:
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
    return "none", ("the checkpoint has no plaintune record of its output mapping, so its raw output is used as "
                    "transformers gives it; set model.output_activation=sigmoid if it was trained that way")


def choose_loss(requested: str, activation: str, num_labels: int) -> str:
    """training.loss, with auto resolved for the chosen head mapping."""
    from .errors import UserError

    if num_labels > 1:
        return "CrossEntropyLoss" if requested == "auto" else requested
    if requested == "auto":
        return "bce" if activation == "sigmoid" else "mse"
    if canonical_loss(requested) == "bce" and activation != "sigmoid":
        raise UserError(f"training.loss: {requested} needs a sigmoid head, but the output mapping is {activation} "
                        "(see the 'output mapping' line above); use training.loss=auto or mse, or set "
                        "model.output_activation=sigmoid")
    return requested

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

from .factory import build_loss, canonical_loss

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

"""The bi-encoder (SBERT-style): one shared encoder, mean pooling, cosine similarity.

It plugs into the same Trainer, losses, checkpoints and inference path as the
cross-encoder: it returns `.logits` (the cosine, shape (batch, 1)), the
`Objective` maps the cosine to the label range, and `save_pretrained` writes the
plain encoder, so `best/` loads with `AutoModel.from_pretrained`. Keys inside
plaintune carry an `encoder.` prefix, which the checkpoint key rules add or
strip as needed (it is this model's `base_model_prefix`).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class BiEncoder(nn.Module):
    base_model_prefix = "encoder"

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids, attention_mask, input_ids_b, attention_mask_b, token_type_ids=None,
                token_type_ids_b=None):
        first = self.embed(input_ids, attention_mask, token_type_ids)
        second = self.embed(input_ids_b, attention_mask_b, token_type_ids_b)
        return SimpleNamespace(logits=F.cosine_similarity(first.float(), second.float(), dim=-1).unsqueeze(-1))

    def save_pretrained(self, path, **kwargs) -> None:
        self.encoder.save_pretrained(path, **kwargs)

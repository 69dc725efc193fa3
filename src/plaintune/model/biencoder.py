"""The bi-encoder (SBERT-style): one shared encoder, mean pooling, cosine similarity.

It plugs into the same Trainer, losses, checkpoints and inference path as the
cross-encoder: it returns `.logits` (the cosine, shape (batch, 1)), the
`Objective` maps the cosine to the label range, and `save_pretrained` writes the
encoder as a complete sentence-transformers directory (modules.json: the
Transformer at the top level with the trained max_seq_length, mean Pooling, and
Normalize when the base model had it), so `best/` loads with
`SentenceTransformer(best)` (whose cosines are plaintune's) and with
`AutoModel.from_pretrained` (plus mean pooling). Keys inside
plaintune carry an `encoder.` prefix, which the checkpoint key rules add or
strip as needed (it is this model's `base_model_prefix`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

PROMPT_NAME = "plaintune"  # the name model.prompt has among the export's sentence-transformers prompts


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class BiEncoder(nn.Module):
    base_model_prefix = "encoder"

    def __init__(
        self, encoder: nn.Module, max_seq_length: Optional[int] = None, normalize: bool = False, prompt: str = ""
    ):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.max_seq_length = max_seq_length  # what training truncated to: sentence-transformers must too
        self.normalize = normalize  # the base model's pipeline ended in Normalize (cosines unchanged)
        self.prompt = prompt  # model.prompt: sentence-transformers' default prompt in the export

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(
        self, input_ids, attention_mask, input_ids_b, attention_mask_b, token_type_ids=None, token_type_ids_b=None
    ):
        first = self.embed(input_ids, attention_mask, token_type_ids)
        second = self.embed(input_ids_b, attention_mask_b, token_type_ids_b)
        return SimpleNamespace(logits=F.cosine_similarity(first.float(), second.float(), dim=-1).unsqueeze(-1))

    def save_pretrained(self, path, **kwargs) -> None:
        self.encoder.save_pretrained(path, **kwargs)
        # An encoder built without its pooler (add_pooling_layer=False: mean pooling never uses it) is
        # loaded the same way by sentence-transformers, instead of with a fresh pooler and a load
        # report of "newly initialized" tensors that reads as a broken export.
        model_args = {"add_pooling_layer": False} if getattr(self.encoder, "pooler", "none") is None else {}
        write_sentence_transformers_files(
            Path(path), self.config.hidden_size, self.max_seq_length, self.normalize, model_args, self.prompt
        )


def base_normalizes(source: str) -> bool:
    """Whether a local sentence-transformers model directory ends its pipeline in Normalize."""
    modules = Path(source) / "modules.json"
    try:
        entries = json.loads(modules.read_text(encoding="utf-8")) if modules.is_file() else []
    except (OSError, ValueError):
        return False
    return any(isinstance(e, dict) and str(e.get("type", "")).endswith("models.Normalize") for e in entries)


def write_sentence_transformers_files(
    folder: Path,
    hidden_size: int,
    max_seq_length: Optional[int],
    normalize: bool,
    model_args: Optional[dict] = None,
    prompt: str = "",
) -> None:
    """modules.json and the module configs that make `folder` (an encoder saved with save_pretrained)
    a sentence-transformers model computing what plaintune computes: mean pooling over the tokens,
    after `prompt` (its default prompt, which encode() applies unless told otherwise).
    `model_args`: keyword arguments its Transformer module passes to from_pretrained ("model_args":
    the key every sentence-transformers version reads)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {
            "max_seq_length": max_seq_length or 512,
            "do_lower_case": False,
            **({"model_args": model_args} if model_args else {}),
        },
        "config_sentence_transformers.json": {
            "similarity_fn_name": "cosine",
            **({"prompts": {PROMPT_NAME: prompt}, "default_prompt_name": PROMPT_NAME} if prompt else {}),
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

"""Tokenized pair datasets (token ids computed once) and dynamic padding of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from plaintune.data.tables import PairTable
from plaintune.errors import UserError


@dataclass(frozen=True)
class PairEncoding:
    """How a model reads a sentence pair. Fixed when the model is built, recorded with best/
    (config.json's plaintune_output), and read back by inference, so a model predicts as it trained."""

    kind: str = "cross_encoder"  # cross_encoder: one joint input; bi_encoder: each sentence alone
    max_length: int = 128  # tokens per input, longest side truncated first
    token_type_ids: bool = True  # segment ids, only for a model with a row for each side (model/architecture.py)
    prompt: str = ""  # model.prompt: before each sentence (bi-encoder) or before the pair (cross-encoder)

    def record(self) -> dict:
        """The fields recorded in config.json (kind is recorded beside the output mapping)."""
        return {"max_length": self.max_length, "token_type_ids": self.token_type_ids, "prompt": self.prompt}


def with_prompt(sentences: list[str], prompt: str) -> list[str]:
    return [prompt + sentence for sentence in sentences] if prompt else sentences


def check_prompt_fits(tokenizer, encoding: PairEncoding) -> None:
    """A prompt that fills model.max_length leaves no room for the sentences: truncation would keep the
    prompt alone, and every pair would score the same."""
    if not encoding.prompt:
        return
    prompt_tokens = len(tokenizer(encoding.prompt, add_special_tokens=False)["input_ids"])
    specials = tokenizer.num_special_tokens_to_add(pair=encoding.kind != "bi_encoder")
    room = encoding.max_length - specials - prompt_tokens
    if room < 8:
        raise UserError(
            f"model.prompt: takes {prompt_tokens} of model.max_length {encoding.max_length} tokens "
            f"({specials} more are the model's special tokens), leaving {max(room, 0)} for the sentences "
            "(fewer than 8); "
            "shorten the prompt or raise model.max_length"
        )


class PairDataset(Dataset):
    """Sentence pairs tokenized once; items are unpadded token id lists.

    `token_type_ids` None takes what the tokenizer returns by habit; True or False asks for segment ids
    or not (what the model takes). `prompt` goes before the first sentence, as sentence-transformers'
    CrossEncoder puts a prompt before a pair."""

    def __init__(
        self,
        table: PairTable,
        tokenizer,
        max_length: int,
        swap: bool = False,
        token_type_ids: Optional[bool] = None,
        prompt: str = "",
    ):
        first, second = (table.sentence_2, table.sentence_1) if swap else (table.sentence_1, table.sentence_2)
        encoded = tokenizer(
            with_prompt(first, prompt),
            second,
            truncation="longest_first",
            max_length=max_length,
            return_token_type_ids=token_type_ids,
        )
        self.input_ids: list[list[int]] = encoded["input_ids"]
        self.token_type_ids: Optional[list[list[int]]] = encoded.get("token_type_ids")
        self.labels = table.labels
        self.lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "input_ids": self.input_ids[index]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[index]
        if self.labels is not None:
            item["label"] = float(self.labels[index])
        return item


class SeparatePairDataset(Dataset):
    """Both sentences tokenized on their own (for the bi-encoder), each after `prompt`; items carry
    `input_ids` and `input_ids_b` (a single sentence's segment ids are all 0: the model's default).
    `lengths` is the longer side, which is what padding costs."""

    def __init__(self, table: PairTable, tokenizer, max_length: int, swap: bool = False, prompt: str = ""):
        first, second = (table.sentence_2, table.sentence_1) if swap else (table.sentence_1, table.sentence_2)
        self.input_ids = tokenizer(
            with_prompt(first, prompt), truncation=True, max_length=max_length, return_token_type_ids=False
        )["input_ids"]
        self.input_ids_b = tokenizer(
            with_prompt(second, prompt), truncation=True, max_length=max_length, return_token_type_ids=False
        )["input_ids"]
        self.labels = table.labels
        self.lengths = np.array([max(len(a), len(b)) for a, b in zip(self.input_ids, self.input_ids_b)], dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "input_ids": self.input_ids[index], "input_ids_b": self.input_ids_b[index]}
        if self.labels is not None:
            item["label"] = float(self.labels[index])
        return item


def make_dataset(table: PairTable, tokenizer, encoding: PairEncoding, swap: bool = False):
    """The dataset a model reads: joint pairs (cross-encoder) or separate sentences (bi-encoder)."""
    if encoding.kind == "bi_encoder":
        return SeparatePairDataset(table, tokenizer, encoding.max_length, swap=swap, prompt=encoding.prompt)
    return PairDataset(
        table, tokenizer, encoding.max_length, swap=swap, token_type_ids=encoding.token_type_ids, prompt=encoding.prompt
    )


class PadCollator:
    """Pads a batch to its own longest sequence (dynamic padding), for each side present
    (`input_ids`, and `input_ids_b` for bi-encoder items)."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.float32):
        self.pad_id = pad_id
        self.label_dtype = label_dtype

    def _pad(self, items: list[dict], suffix: str, batch: dict) -> None:
        key = f"input_ids{suffix}"
        width = max(len(item[key]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        has_types = f"token_type_ids{suffix}" in items[0]
        token_type_ids = torch.zeros((len(items), width), dtype=torch.long) if has_types else None
        for row, item in enumerate(items):
            n = len(item[key])
            input_ids[row, :n] = torch.tensor(item[key])
            attention_mask[row, :n] = 1
            if has_types:
                token_type_ids[row, :n] = torch.tensor(item[f"token_type_ids{suffix}"])
        batch[key] = input_ids
        batch[f"attention_mask{suffix}"] = attention_mask
        if has_types:
            batch[f"token_type_ids{suffix}"] = token_type_ids

    def __call__(self, items: list[dict]) -> dict:
        batch = {"index": torch.tensor([item["index"] for item in items])}
        for suffix in ("", "_b"):
            if f"input_ids{suffix}" in items[0]:
                self._pad(items, suffix, batch)
        if "label" in items[0]:
            batch["labels"] = torch.tensor([item["label"] for item in items], dtype=self.label_dtype)
        return batch

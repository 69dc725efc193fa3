"""Checks on the data as a whole: a dev set that can score, train/dev overlap, fingerprints for resume.

These need all rows of a file (or of two files) at once, unlike the per-row checks
of `data.read_pairs`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from plaintune.data.tables import PairTable
from plaintune.errors import UserError


def check_followed_metric(table: PairTable, key: str, cfg) -> None:
    """The metric the run follows must be computable on the dev set, or no checkpoint could ever be
    'best': correlations need two different labels, F1/accuracy of a regression model a usable
    binary column (with both classes, or F1 says nothing)."""
    num_labels, metric = cfg.model.num_labels, cfg.training.metric
    if num_labels > 1 or metric == "loss":
        return
    if metric not in ("f1", "accuracy"):
        check_dev_scores(table, key, num_labels)
        return
    column = cfg.data.columns.binary_label
    if table.binary is None:
        why = table.binary_problem or f"has no column '{column}'" if column else "data.columns.binary_label is null"
        raise UserError(
            f"training.metric: {metric} scores the dev file's binary column, but {key} "
            f"'{table.path}' {why}; add it (1 where label >= 3), set data.columns.binary_label, or "
            "follow pearson"
        )
    if metric == "f1" and table.binary.min() == table.binary.max():
        raise UserError(
            f"training.metric: f1 is undefined on {key} '{table.path}': every '{column}' value is "
            f"{table.binary[0]}; use a dev set with both classes, or follow pearson"
        )


def check_dev_scores(table: PairTable, key: str, num_labels: int) -> None:
    """Correlations must be defined on the dev set, or no checkpoint could ever be 'best'."""
    if num_labels > 1:
        return
    if len(table) < 2:
        raise UserError(
            f"{key}: '{table.path}' has {len(table)} row; Pearson needs at least 2 rows with different "
            "labels: use a larger dev set"
        )
    if np.ptp(table.labels) == 0:
        raise UserError(
            f"{key}: '{table.path}': every label is {table.labels[0]:g}; Pearson is undefined on "
            "constant labels: use a dev set with different scores"
        )


def pair_key(first: str, second: str) -> tuple[str, str]:
    """A pair as a set of two whitespace- and case-normalised sentences (order does not matter)."""
    a, b = (" ".join(s.split()).lower() for s in (first, second))
    return (a, b) if a <= b else (b, a)


def overlap(train: PairTable, dev: PairTable) -> tuple[int, int]:
    """(dev rows whose sentence pair is also in train, dev ids also in train)."""
    seen = {pair_key(a, b) for a, b in zip(train.sentence_1, train.sentence_2)}
    pairs = sum(pair_key(a, b) in seen for a, b in zip(dev.sentence_1, dev.sentence_2))
    ids = len(set(dev.ids) & set(train.ids))
    return pairs, ids


def check_overlap(train: PairTable, dev: PairTable, max_share: float, announce: bool = True) -> None:
    """Report train/dev overlap; above `max_share` of the dev rows it is an error (dev Pearson would
    then measure memory, not the model)."""
    pairs, ids = overlap(train, dev)
    if not pairs and not ids:
        return
    share = pairs / len(dev)
    if share > max_share:
        raise UserError(
            f"data.dev_path: {pairs} of {len(dev)} dev pairs ({share:.1%}) also appear in data.train_path "
            f"('{train.path}'), above data.max_overlap={max_share:g}; dev scores would measure memorised "
            "pairs: remove them from one file, or raise data.max_overlap if intended"
        )
    if announce:
        print(
            f"note: {pairs} of {len(dev)} dev pairs ({share:.1%}) also appear in the training data"
            + (f"; {ids} dev ids are also train ids" if ids else "")
        )


def fingerprint(path: str, rows: int) -> dict:
    """What identifies a data file's contents: its SHA-256 and its row count."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest(), "rows": int(rows)}


def changed_files(saved: Optional[dict], current: dict) -> list[str]:
    """Descriptions of the data files that differ from a checkpoint's fingerprints."""
    changes = []
    for key, now in current.items():
        then = (saved or {}).get(key)
        if not then or then.get("sha256") == now["sha256"]:
            continue  # older bundles carry no fingerprint: nothing to compare
        rows = f", {then.get('rows')} -> {now['rows']} rows" if then.get("rows") != now["rows"] else ""
        changes.append(f"{key} '{now['path']}' (contents changed{rows})")
    return changes


def data_fingerprints(tables: dict[str, PairTable]) -> dict:
    # train and dev make the run; test_path is only scored at the end, so editing it changes nothing here
    return {
        f"data.{role}_path": fingerprint(table.path, len(table))
        for role, table in tables.items()
        if role in ("train", "dev") and Path(table.path).is_file()
    }


def tokenizer_coverage(tokenizer, sentences: list[str], sample: int = 1000) -> Optional[dict]:
    """How well a tokenizer fits the text: shares of unknown and single-character pieces, tokens per
    character. An English WordPiece on Korean gives ~6% unknown, ~94% single characters, 1.8 tokens
    per character (English: 0%, ~30%, 0.3)."""
    texts = [s for s in sentences[:sample] if s.strip()]
    if not texts:
        return None
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [i for row in encoded for i in row]
    if not ids:
        return None
    pieces = tokenizer.convert_ids_to_tokens(ids)
    single = sum(len(p.replace("##", "").lstrip("▁Ġ")) == 1 for p in pieces)
    unknown = sum(i == tokenizer.unk_token_id for i in ids) if tokenizer.unk_token_id is not None else 0
    characters = sum(len("".join(s.split())) for s in texts)
    return {"unknown": unknown / len(ids), "single": single / len(ids), "per_char": len(ids) / max(characters, 1)}


# Hangul syllables, jamo and compatibility jamo
HANGUL = ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F))


def hangul_share(sentences: list[str], sample: int = 1000) -> float:
    """The share of letters that are Hangul, over a sample of the sentences."""
    letters = [c for s in sentences[:sample] for c in s if c.isalpha()]
    korean = sum(any(low <= ord(c) <= high for low, high in HANGUL) for c in letters)
    return korean / len(letters) if letters else 0.0


def warn_poor_coverage(tokenizer, table: PairTable, model_name: str, remedy: str) -> None:
    """One warning, with the numbers in words and `remedy` (a model for the data's language), when the
    model cannot read the data's language."""
    stats = tokenizer_coverage(tokenizer, table.sentence_1 + table.sentence_2)
    if stats is None or (stats["unknown"] < 0.02 and stats["single"] < 0.6):
        return
    print(
        f"warning: the tokenizer of model.name '{model_name}' reads this data poorly: "
        f"{stats['unknown']:.1%} of its tokens are unknown to the model, {stats['single']:.0%} are single "
        f"characters, and it needs {stats['per_char']:.2f} tokens per character (for text in the model's own "
        f"language: about 0%, 30% and 0.3); expect poor scores. Use a model for this language: {remedy}"
    )

"""plaintune's record of a saved model: how its head's output maps to a score (model/objective.py
explains the mappings) and what it was fed in training (max_length, segment ids, prompt). Written into
config.json of every best/ (`plaintune_output`), derived from the run config of a resume bundle, and
read here, for inference, warm starts, conversion and the checks of a model directory alike."""

from __future__ import annotations

import math
from typing import Optional

from plaintune.errors import UserError

ACTIVATIONS = ("none", "sigmoid", "cosine")  # cosine: the bi-encoder's similarity in [-1, 1]
CONFIG_ATTRIBUTE = "plaintune_output"  # stored in the HF config.json of saved models
KINDS = ("cross_encoder", "bi_encoder")


def parse(record: object, where: str) -> Optional[dict]:
    """A plaintune output record, checked; None when there is none."""

    if record is None:
        return None
    # plaintune has written activation, low and high since the record exists (kind and max_length came later)
    missing = [key for key in ("activation", "low", "high") if key not in record] if isinstance(record, dict) else []
    if missing:
        raise UserError(
            f"{where}: '{CONFIG_ATTRIBUTE}' lacks {', '.join(missing)} ({record!r}); expected "
            "{activation: none|sigmoid|cosine, low: number, high: larger number}: fix or remove it"
        )
    ok = isinstance(record, dict) and record.get("activation") in ACTIVATIONS
    if ok:
        low, high = record.get("low", 0.0), record.get("high", 1.0)
        ok = (
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
            and low < high
            and record.get("kind", "cross_encoder") in KINDS
            and isinstance(record.get("token_type_ids", False), bool)
            and isinstance(record.get("prompt", ""), str)
        )
    if not ok:
        raise UserError(
            f"{where}: '{CONFIG_ATTRIBUTE}' is malformed ({record!r}); expected {{activation: "
            f"none|sigmoid|cosine, low: number, high: larger number, kind: cross_encoder|bi_encoder, "
            f"token_type_ids: true|false, prompt: text}}: "
            "fix or remove it"
        )
    return record


def write(model_config, mapping: dict, inputs: dict) -> None:
    """Record `mapping` (Objective.describe()) and `inputs` (PairEncoding.record()) in a model config."""
    setattr(model_config, CONFIG_ATTRIBUTE, {**mapping, **inputs})


def attach(model_config, saved: dict) -> None:
    """Carry a record already read (a converted checkpoint keeps its mapping)."""
    setattr(model_config, CONFIG_ATTRIBUTE, dict(saved))


def of_config(model_config, where: str) -> Optional[dict]:
    """The record a loaded model's config carries (config.json's), checked; None for a foreign model."""
    return parse(getattr(model_config, CONFIG_ATTRIBUTE, None), where)


def from_bundle(bundle: object) -> Optional[dict]:
    """The output record of a plaintune resume bundle (from the run config inside it); None otherwise."""
    config = bundle.get("config") if isinstance(bundle, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return None
    model = config["model"]
    kind = model.get("kind", "cross_encoder")
    # the mapping its run resolved (the config may say auto): last.pt's "resolved" (training/derived.py)
    resolved = bundle.get("resolved") or {}
    activation = "cosine" if kind == "bi_encoder" else resolved.get("model.output_activation")
    if activation not in ACTIVATIONS:
        return None
    label_range = (config.get("data") or {}).get("label_range") or [0.0, 1.0]
    return {
        "activation": activation,
        "low": float(label_range[0]),
        "high": float(label_range[1]),
        "kind": kind,
        "max_length": model.get("max_length"),
        "prompt": model.get("prompt") or "",
    }


def trained_inputs(saved: Optional[dict]) -> dict:
    """What a plaintune checkpoint was fed in training, from its record: max_length, token_type_ids
    and prompt, each only when recorded (a checkpoint from anywhere else records none)."""
    saved = saved if isinstance(saved, dict) else {}
    found = {}
    length = saved.get("max_length")
    if isinstance(length, int) and not isinstance(length, bool) and length > 0:
        found["max_length"] = length
    if isinstance(saved.get("token_type_ids"), bool):
        found["token_type_ids"] = saved["token_type_ids"]
    if isinstance(saved.get("prompt"), str):
        found["prompt"] = saved["prompt"]
    return found

"""Weights: fit a state dict onto a model by key rules, load it strictly, report what happened.

Checkpoints from DDP, torch.compile, Lightning or older transformers name the same
tensors differently. Key fixes are data (regex pairs), tried greedily: a rule is
applied only when it makes more checkpoint keys match the model, and every applied
rule is reported. Nothing is loaded with `strict=False` silently: tensors that stay
missing, unexpected or mis-shaped are an error unless a glob in `LoadRules` allows them.

    report = load_weights(model, path, LoadRules(key_rules, allow_missing=["classifier.*"]))
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from plaintune.errors import UserError
from plaintune.weights.formats import read_state_dict, short_list

# Buffers some older checkpoints carry that current models rebuild themselves.
IGNORABLE_UNEXPECTED = ("*position_ids", "*.num_batches_tracked")

# (name, pattern, replacement): prefixes added by wrappers, and old layer-norm names.
BUILTIN_RULES = (
    ("strip DDP 'module.'", r"^module\.", ""),
    ("strip torch.compile '_orig_mod.'", r"^_orig_mod\.", ""),
    ("strip Lightning 'model.'", r"^model\.", ""),
    ("LayerNorm gamma -> weight", r"\.gamma$", ".weight"),
    ("LayerNorm beta -> bias", r"\.beta$", ".bias"),
)


@dataclass(frozen=True)
class LoadRules:
    """What a load may do beyond exact matches; the fields are the model config's keys of the same name."""

    key_rules: Sequence[Sequence[str]] = ()  # (regex, replacement) pairs, always applied, in order
    allow_missing: Sequence[str] = ()  # globs: model tensors that may start fresh (absent or reshaped)
    allow_unexpected: Sequence[str] = ()  # globs: checkpoint tensors that may be ignored
    allow_nonfinite: Sequence[str] = ()  # globs: model tensors that may hold NaN/inf


@dataclass
class LoadReport:
    source: str
    fmt: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not in checkpoint, allowed -> fresh
    unexpected: list[str] = field(default_factory=list)  # in checkpoint, ignored (allowed)
    reshaped: list[str] = field(default_factory=list)  # shape differs, allowed -> fresh
    rules: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.fmt})"]
        if self.rules:
            parts.append("rules: " + ", ".join(self.rules))
        for label, names in (
            ("fresh (allowed missing)", self.missing),
            ("reshaped, fresh", self.reshaped),
            ("ignored unexpected", self.unexpected),
        ):
            if names:
                parts.append(f"{label}: {short_list(names)}")
        return "; ".join(parts)

    def full_text(self) -> str:
        lines = [f"source: {self.source}", f"format: {self.fmt}", f"rules applied: {self.rules or 'none'}"]
        for label, names in (
            ("loaded", self.loaded),
            ("missing (initialised fresh)", self.missing),
            ("shape-mismatched (initialised fresh)", self.reshaped),
            ("unexpected (ignored)", self.unexpected),
        ):
            lines.append(f"{label}: {len(names)}")
            lines += [f"  {name}" for name in names]
        return "\n".join(lines) + "\n"


def _rename(keys: Iterable[str], pattern: str, replacement: str, keep: Optional[set[str]] = None) -> dict[str, str]:
    """Rename keys by a regex; keys in `keep` (already matching the model) stay as they are."""
    regex = re.compile(pattern)
    keep = keep or set()
    return {k: k if k in keep else regex.sub(replacement, k, count=1) for k in keys}


def _prefix_rules(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix:
        return []
    p = re.escape(prefix)
    # Added to every key that does not match yet (matching keys are never renamed); not only to
    # keys lacking the prefix, since a base model may have a submodule of the same name.
    return [(f"add base prefix '{prefix}.'", r"^", f"{prefix}."), (f"strip base prefix '{prefix}.'", rf"^{p}\.", "")]


def map_keys(
    state: dict, model_keys: set[str], user_rules: Sequence[Sequence[str]] = (), model: Optional[torch.nn.Module] = None
) -> tuple[dict, list[str]]:
    """Rename checkpoint keys towards the model's keys.

    User rules (regex pairs from `model.key_rules`) always apply, in order. Then
    built-in rules are applied greedily, each only while it increases the
    number of keys that match the model. Returns the renamed state and the names
    of the rules used.
    """
    applied = []
    for pattern, replacement in user_rules:
        mapping = _rename(state, pattern, replacement)
        if any(k != v for k, v in mapping.items()):
            applied.append(f"user rule {pattern!r} -> {replacement!r}")
        state = {mapping[k]: v for k, v in state.items()}

    candidates = list(BUILTIN_RULES) + (_prefix_rules(model) if model is not None else [])

    def matches(keys: Iterable[str]) -> int:
        return sum(1 for k in keys if k in model_keys)

    def apply(keys: Iterable[str], sequence) -> Optional[dict[str, str]]:
        mapping = {k: k for k in keys}
        for _, pattern, replacement in sequence:
            step = _rename(mapping.values(), pattern, replacement, keep=model_keys)
            if len(set(step.values())) < len(step):
                return None  # would merge two keys: not a rename
            mapping = {k: step[v] for k, v in mapping.items()}
        return mapping

    current = matches(state)
    while True:
        # Single rules first; pairs only when no single rule helps on its own
        # (e.g. 'module._orig_mod.' needs both strips before anything matches).
        best = None
        for sequences in ([(c,) for c in candidates], [(a, b) for a in candidates for b in candidates if a != b]):
            for sequence in sequences:
                mapping = apply(state, sequence)
                if mapping is None:
                    continue
                gain = matches(mapping.values()) - current
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, sequence, mapping)
            if best is not None:
                break
        if best is None:
            break
        gain, sequence, mapping = best
        state = {mapping[k]: v for k, v in state.items()}
        current += gain
        applied += [name for name, _, _ in sequence if name not in applied]
    return state, applied


def _any_match(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def check_values(state: dict, target: dict, source: str, allow_nonfinite: Sequence[str] = ()) -> None:
    """Tensors that would load but cannot be right: integers into floating-point weights (a cast or
    quantized state dict: copying would truncate every weight to a whole number) and NaN/inf
    values (a diverged run) unless their model name matches an `allow_nonfinite` glob.
    Half-precision floats into a float32 model are fine: they are cast up exactly."""
    cast = [
        f"{k} ({_dtype(v)} vs model {_dtype(target[k])})"
        for k, v in state.items()
        if target[k].is_floating_point() and not v.is_floating_point()
    ]
    if cast:
        raise UserError(
            f"checkpoint '{source}' holds {len(cast)} non-floating-point tensors where the model's are "
            f"floating point: {short_list(cast, 3)}; it was cast or quantized (e.g. .to(torch.int8)); "
            "load the floating-point checkpoint it was made from"
        )
    nonfinite = [
        k
        for k, v in state.items()
        if v.is_floating_point() and not _any_match(k, allow_nonfinite) and not bool(torch.isfinite(v).all())
    ]
    if nonfinite:
        raise UserError(
            f"checkpoint '{source}' holds NaN or inf values in {len(nonfinite)} tensors: "
            f"{short_list(sorted(nonfinite))}; a diverged run's weights predict garbage: use an earlier "
            "checkpoint, or, if those tensors are meant to hold them, list them in model.allow_nonfinite "
            f'(e.g. ["{sorted(nonfinite)[0]}"])'
        )


def load_into(
    model: torch.nn.Module,
    state: dict,
    source: str,
    fmt: str,
    rules: LoadRules = LoadRules(),
    strict_hint: Optional[str] = None,
) -> LoadReport:
    """Load `state` into `model` strictly, after key rules; return what happened.

    Missing or shape-mismatched tensors not matched by an `allow_missing` glob,
    and unexpected ones not matched by `allow_unexpected`, are a `UserError`
    that lists them and says how to allow them (`strict_hint` replaces that advice);
    so are tensors whose values cannot be right (see `check_values`).
    """
    target = model.state_dict()
    state, applied = map_keys(state, set(target), rules.key_rules, model)
    report = LoadReport(source=source, fmt=fmt, rules=applied)

    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    mismatched = sorted(k for k in state if k in target and state[k].shape != target[k].shape)

    bad_missing = [k for k in missing if not _any_match(k, rules.allow_missing)]
    bad_shape = [k for k in mismatched if not _any_match(k, rules.allow_missing)]
    bad_unexpected = [k for k in unexpected if not _any_match(k, tuple(rules.allow_unexpected) + IGNORABLE_UNEXPECTED)]
    problems = []
    if bad_missing:
        problems.append(f"{len(bad_missing)} model tensors missing from the checkpoint: {short_list(bad_missing)}")
    if bad_shape:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in bad_shape]
        problems.append(f"{len(bad_shape)} with another shape: {short_list(shapes, 3)}")
    if bad_unexpected:
        problems.append(f"{len(bad_unexpected)} checkpoint tensors the model lacks: {short_list(bad_unexpected)}")
    if problems:
        hint = (
            "is it a checkpoint of another model or task (model.name, model.num_labels)? To start those "
            'tensors fresh on purpose, list them in model.allow_missing (e.g. ["classifier.*"])'
        )
        if bad_unexpected and not (bad_missing or bad_shape):
            hint = "to ignore them on purpose, list them in model.allow_unexpected"
        if strict_hint:
            hint = strict_hint
        if applied:
            hint += f" (rules applied: {', '.join(applied)})"
        raise UserError(f"checkpoint '{source}' does not fit the model: {'; '.join(problems)}; {hint}")

    loadable = {k: v for k, v in state.items() if k in target and k not in mismatched}
    check_values(loadable, target, source, rules.allow_nonfinite)
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.missing = missing
    report.reshaped = mismatched
    report.unexpected = unexpected
    return report


def load_weights(
    model: torch.nn.Module,
    path: Path | str,
    rules: LoadRules = LoadRules(),
    trust: bool = False,
    strict_hint: Optional[str] = None,
) -> LoadReport:
    """`read_state_dict` + `load_into`: the one way weights get into a model."""
    state, fmt = read_state_dict(path, trust)
    return load_into(model, state, str(path), fmt, rules, strict_hint)

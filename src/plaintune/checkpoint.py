"""Checkpoints: read any weights format, map keys onto a model by rules, load strictly with a report.

One load path serves inference, warm starts and resume:

    state, fmt = read_state_dict(path)             # HF dir, .safetensors, .pt/.bin/.ckpt, bundles
    report = load_into(model, state, rules, ...)    # key rules + strict check + report

Key fixes are data (regex pairs), tried greedily: a rule is applied only when
it makes more checkpoint keys match the model, and every applied rule is
reported. Nothing is loaded with `strict=False` silently: tensors that stay
missing, unexpected or mis-shaped are an error unless allowed by a glob.

CLI: `python -m plaintune.checkpoint inspect PATH [--config NAME]`.
"""
from __future__ import annotations

import fnmatch
import json
import os
import pickle
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from .errors import UserError

# Bundle keys whose value is the model's state dict, in order of preference.
BUNDLE_KEYS = ("model_state_dict", "state_dict", "model", "module", "model_state")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
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


@dataclass
class LoadReport:
    source: str
    fmt: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # not in checkpoint, allowed -> fresh
    unexpected: list[str] = field(default_factory=list)       # in checkpoint, ignored (allowed)
    reshaped: list[str] = field(default_factory=list)         # shape differs, allowed -> fresh
    rules: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.fmt})"]
        if self.rules:
            parts.append("rules: " + ", ".join(self.rules))
        for label, names in (("fresh (allowed missing)", self.missing), ("reshaped, fresh", self.reshaped),
                             ("ignored unexpected", self.unexpected)):
            if names:
                parts.append(f"{label}: {_short_list(names)}")
        return "; ".join(parts)

    def full_text(self) -> str:
        lines = [f"source: {self.source}", f"format: {self.fmt}", f"rules applied: {self.rules or 'none'}"]
        for label, names in (("loaded", self.loaded), ("missing (initialised fresh)", self.missing),
                             ("shape-mismatched (initialised fresh)", self.reshaped),
                             ("unexpected (ignored)", self.unexpected)):
            lines.append(f"{label}: {len(names)}")
            lines += [f"  {name}" for name in names]
        return "\n".join(lines) + "\n"


def _short_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------ reading

def _at(where: str) -> str:
    return f"{where}: " if where else ""


def unreadable_error(path: Path, err: OSError, where: str = "") -> UserError:
    """A file that exists but cannot be opened: say why (not "no such file")."""
    if isinstance(err, PermissionError):
        return UserError(f"{_at(where)}cannot read '{path}': permission denied; make it readable "
                         f"(chmod u+r '{path}') or copy it somewhere readable")
    return UserError(f"{_at(where)}cannot read '{path}': {err.strerror or err}")


def _stat(path: Path, where: str = "") -> tuple[bool, bool]:
    """(is_dir, is_file); a folder on the way that cannot be searched is "permission denied",
    not "does not exist" (os.stat, since newer Pythons' Path.is_file answers False for it)."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError as err:
        raise unreadable_error(path, err, where) from None
    except (OSError, ValueError):
        return False, False
    return stat.S_ISDIR(mode), stat.S_ISREG(mode)


JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}
RESTORE = "restore it from a good copy (e.g. save_pretrained again)"


def read_json_object(path: Path, where: str = "", what: str = "valid JSON") -> dict:
    """A JSON file that must hold an object (config.json, a shard index, tokenizer files).
    `what` says what a damaged one is not (e.g. "a valid tokenizer file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{_at(where)}'{path}' is not {what} (not UTF-8 text at byte {err.start}); "
                        f"{RESTORE}") from None
    except OSError as err:
        raise unreadable_error(path, err, where) from None
    try:
        obj = json.loads(text)
    except ValueError as err:
        detail = err if what == "valid JSON" else f"invalid JSON: {err}"
        raise UserError(f"{_at(where)}'{path}' is not {what} ({detail}); {RESTORE}") from None
    if not isinstance(obj, dict):
        kind = JSON_TYPES.get(type(obj), type(obj).__name__)
        raise UserError(f"{_at(where)}'{path}' is not {what} (it holds {kind}, not a JSON object); {RESTORE}")
    return obj


def check_model_config(path: Path, where: str = "") -> dict:
    """config.json of a model directory: an object naming its architecture, with a well-formed
    plaintune output record if it has one (inference maps the head's output by it)."""
    from .objective import CONFIG_ATTRIBUTE, parse_record  # objective imports factory, which may import us

    config = read_json_object(path, where)
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise UserError(f"{_at(where)}'{path}' has no model_type (e.g. \"bert\"), so the architecture is "
                        f"unknown; {RESTORE}")
    parse_record(config.get(CONFIG_ATTRIBUTE), f"{_at(where)}'{path}'")
    return config


def shard_files(index: Path, where: str = "") -> list[str]:
    """The shard files a `*.index.json` names, each checked to exist next to it."""
    weight_map = read_json_object(index, where).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(v, str) and v for v in weight_map.values()):
        raise UserError(f"{_at(where)}shard index '{index}' is empty or malformed: it needs a weight_map of "
                        "tensor name -> shard file; restore it, or delete it if the directory holds a single "
                        "model.safetensors")
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if not (index.parent / shard).is_file()]
    if absent:
        raise UserError(f"{_at(where)}shard index '{index}' names {len(absent)} shard(s) that do not exist: "
                        f"{_short_list(absent)}; copy them into '{index.parent}'")
    return shards


TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_checkpoint_dir(path: Path, where: str = "") -> None:
    """The small files of a checkpoint directory, read before any model is built: a damaged one
    is one error naming it, not a traceback from deep inside transformers."""
    if (path / "config.json").is_file():
        check_model_config(path / "config.json", where)
    for index_name in SHARD_INDEXES:
        if (path / index_name).is_file():
            shard_files(path / index_name, where)
    for name in TOKENIZER_JSON:
        if (path / name).is_file():
            content = read_json_object(path / name, where, "a valid tokenizer file")
            if name == "tokenizer.json" and not isinstance(content.get("model"), dict):
                raise UserError(f"{_at(where)}'{path / name}' is not a valid tokenizer file (no tokenizer model "
                                "in it); replace it with a good copy (tokenizer.save_pretrained)")


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise unreadable_error(path, err) from None


def load_torch_file(path: Path, trust: bool) -> object:
    _check_readable(path)  # a file that cannot be opened is not "corrupt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Only "Unsupported global" means well-formed pickled objects; anything else is damage.
        if "Unsupported global" not in str(err):
            raise UserError(f"checkpoint '{path}' is not a readable torch file (corrupt or truncated?)") from None
        if not trust:
            raise UserError(f"checkpoint '{path}' contains pickled Python objects (e.g. a whole model saved "
                            "with torch.save(model)); unpickling can run code, so it is refused: if you trust "
                            "its origin, rerun with --trust-checkpoint") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as load_err:  # the pickle needs classes this environment lacks
            raise UserError(f"checkpoint '{path}': cannot unpickle ({type(load_err).__name__}: "
                            f"{str(load_err).splitlines()[0] if str(load_err) else ''}); save a state_dict "
                            "instead: torch.save(model.state_dict(), path)") from None
    except Exception as err:  # damaged bytes surface as almost any exception inside torch.load
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint '{path}' is not a readable torch file (corrupt or truncated? {first})") from None


def _safetensors_load(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_readable(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"checkpoint '{path}' is not a readable safetensors file (corrupt or truncated? "
                        f"{err})") from None


def _read_dir(path: Path, trust: bool) -> tuple[dict, str]:
    check_checkpoint_dir(path)
    for index_name in SHARD_INDEXES:
        index = path / index_name
        if index.is_file():
            shards = shard_files(index)
            state: dict = {}
            for shard in shards:
                state.update(_read_file(path / shard, trust)[0])
            return state, f"Hugging Face directory, {len(shards)} shards"
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _read_file(path / name, trust)[0], f"Hugging Face directory ({name})"
    raise UserError(f"checkpoint directory '{path}' holds no model.safetensors or pytorch_model.bin")


def find_state_dict(obj: object, path: Path) -> tuple[dict, str]:
    """Find the model's state dict inside whatever torch.load returned."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), "pickled whole model"
    if _is_tensor_dict(obj):
        return dict(obj), "state dict"
    if isinstance(obj, dict):
        for key in BUNDLE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                return inner.state_dict(), f"bundle['{key}'] (pickled model)"
            if _is_tensor_dict(inner):
                return dict(inner), f"bundle['{key}']"
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors, "state dict (non-tensor entries ignored)"
        keys = ", ".join(map(str, list(obj)[:8]))
        raise UserError(f"checkpoint '{path}' holds a dict without model weights (keys: {keys}); expected a "
                        f"state dict or a bundle with one of: {', '.join(BUNDLE_KEYS)}")
    raise UserError(f"checkpoint '{path}' holds a {type(obj).__name__}, not model weights")


def _read_file(path: Path, trust: bool) -> tuple[dict, str]:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise unreadable_error(path, err) from None
    if size == 0:
        raise UserError(f"checkpoint '{path}' is empty (0 bytes); the save was interrupted? use another file")
    if path.suffix == ".safetensors":
        return _safetensors_load(path), "safetensors"
    return find_state_dict(load_torch_file(path, trust), path)


def read_state_dict(path: Path | str, trust: bool = False) -> tuple[dict, str]:
    """Weights from a HF directory, .safetensors, or a torch file (state dict, bundle, Lightning)."""
    path = Path(path)
    is_dir, is_file = _stat(path)
    if is_dir:
        return _read_dir(path, trust)
    if not is_file:
        raise UserError(f"checkpoint '{path}' does not exist")
    return _read_file(path, trust)


# ------------------------------------------------------------------ key rules

def _rename(keys: Iterable[str], pattern: str, replacement: str,
            keep: Optional[set[str]] = None) -> dict[str, str]:
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
    return [(f"add base prefix '{prefix}.'", r"^", f"{prefix}."),
            (f"strip base prefix '{prefix}.'", rf"^{p}\.", "")]


def map_keys(state: dict, model_keys: set[str], user_rules: Sequence[Sequence[str]] = (),
             model: Optional[torch.nn.Module] = None) -> tuple[dict, list[str]]:
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
    cast = [f"{k} ({_dtype(v)} vs model {_dtype(target[k])})" for k, v in state.items()
            if target[k].is_floating_point() and not v.is_floating_point()]
    if cast:
        raise UserError(f"checkpoint '{source}' holds {len(cast)} non-floating-point tensors where the model's are "
                        f"floating point: {_short_list(cast, 3)}; it was cast or quantized (e.g. .to(torch.int8)); "
                        "load the floating-point checkpoint it was made from")
    nonfinite = [k for k, v in state.items()
                 if v.is_floating_point() and not _any_match(k, allow_nonfinite) and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise UserError(f"checkpoint '{source}' holds NaN or inf values in {len(nonfinite)} tensors: "
                        f"{_short_list(sorted(nonfinite))}; a diverged run's weights predict garbage: use an earlier "
                        "checkpoint, or, if those tensors are meant to hold them, list them in model.allow_nonfinite "
                        f"(e.g. [\"{sorted(nonfinite)[0]}\"])")


def load_into(model: torch.nn.Module, state: dict, source: str, fmt: str,
              user_rules: Sequence[Sequence[str]] = (), allow_missing: Sequence[str] = (),
              allow_unexpected: Sequence[str] = (), strict_hint: Optional[str] = None,
              allow_nonfinite: Sequence[str] = ()) -> LoadReport:
    """Load `state` into `model` strictly, after key rules; return what happened.

    Missing or shape-mismatched tensors not matched by an `allow_missing` glob,
    and unexpected ones not matched by `allow_unexpected`, are a `UserError`
    that lists them and says how to allow them; so are tensors whose values
    cannot be right (see `check_values`; `allow_nonfinite` globs match model names).
    """
    target = model.state_dict()
    state, rules = map_keys(state, set(target), user_rules, model)
    report = LoadReport(source=source, fmt=fmt, rules=rules)

    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    mismatched = sorted(k for k in state if k in target and state[k].shape != target[k].shape)

    bad_missing = [k for k in missing if not _any_match(k, allow_missing)]
    bad_shape = [k for k in mismatched if not _any_match(k, allow_missing)]
    bad_unexpected = [k for k in unexpected
                      if not _any_match(k, tuple(allow_unexpected) + IGNORABLE_UNEXPECTED)]
    problems = []
    if bad_missing:
        problems.append(f"{len(bad_missing)} model tensors missing from the checkpoint: {_short_list(bad_missing)}")
    if bad_shape:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in bad_shape]
        problems.append(f"{len(bad_shape)} with another shape: {_short_list(shapes, 3)}")
    if bad_unexpected:
        problems.append(f"{len(bad_unexpected)} checkpoint tensors the model lacks: {_short_list(bad_unexpected)}")
    if problems:
        hint = ("is it a checkpoint of another model or task (model.name, model.num_labels)? To start those "
                "tensors fresh on purpose, list them in model.allow_missing (e.g. [\"classifier.*\"])")
        if bad_unexpected and not (bad_missing or bad_shape):
            hint = "to ignore them on purpose, list them in model.allow_unexpected"
        if strict_hint:
            hint = strict_hint
        if rules:
            hint += f" (rules applied: {', '.join(rules)})"
        raise UserError(f"checkpoint '{source}' does not fit the model: {'; '.join(problems)}; {hint}")

    loadable = {k: v for k, v in state.items() if k in target and k not in mismatched}
    check_values(loadable, target, source, allow_nonfinite)
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.missing = missing
    report.reshaped = mismatched
    report.unexpected = unexpected
    return report


def load_weights(model: torch.nn.Module, path: Path | str, user_rules: Sequence[Sequence[str]] = (),
                 allow_missing: Sequence[str] = (), allow_unexpected: Sequence[str] = (),
                 trust: bool = False, strict_hint: Optional[str] = None,
                 allow_nonfinite: Sequence[str] = ()) -> LoadReport:
    """`read_state_dict` + `load_into`: the one way weights get into a model."""
    state, fmt = read_state_dict(path, trust)
    return load_into(model, state, str(path), fmt, user_rules, allow_missing, allow_unexpected, strict_hint,
                     allow_nonfinite)


# ------------------------------------------------------------ run directories

BEST_META = "trainer_state.json"


def is_complete_best(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / BEST_META).is_file() and any(
        (path / name).is_file() for name in WEIGHT_FILES + SHARD_INDEXES)


def find_best_dir(run_dir: Path) -> Optional[Path]:
    """best/, or best.old/ if a crash fell between the two renames of a best update."""
    for name in ("best", "best.old"):
        if is_complete_best(run_dir / name):
            return run_dir / name
    return None


def resolve_saved_model(value: str, saved_root: Path = Path("saved_model")) -> Path:
    """`--saved_model Y`: a path; else a run name under saved_model/ (its best); else a file there."""
    where = f"--saved_model '{value}'"
    candidates = [Path(value).expanduser(), saved_root / value, saved_root / f"{value}.pt"]
    for candidate in candidates:
        is_dir, is_file = _stat(candidate, where)
        if is_file:
            return candidate
        if is_dir:
            # Its small files are checked now, before any model is built from its config.json.
            if (candidate / "config.json").is_file() or any((candidate / n).is_file()
                                                            for n in WEIGHT_FILES + SHARD_INDEXES):
                check_checkpoint_dir(candidate, where)
                return candidate
            best = find_best_dir(candidate)
            if best is not None:
                check_checkpoint_dir(best, where)
                return best
            if (candidate / "last.pt").is_file():
                print(f"note: {candidate} has no complete best/ yet; using its last.pt")
                return candidate / "last.pt"
            raise UserError(f"--saved_model '{value}': directory '{candidate}' holds no checkpoint "
                            "(no best/, last.pt or model weights)")
    runs = sorted(p.name for p in saved_root.iterdir()) if saved_root.is_dir() else []
    hint = f"; runs under {saved_root}/: {', '.join(runs)}" if runs else f"; {saved_root}/ has no runs yet"
    raise UserError(f"--saved_model '{value}': no such file, directory or run name{hint}")


if __name__ == "__main__":
    from .checkpoint_cli import main

    raise SystemExit(main())

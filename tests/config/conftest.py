"""Fixtures for the config tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so files can be named as a user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path

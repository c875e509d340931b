"""Fixtures for the whole suite.

Tests that read the real text corpus take the `shakespeare` fixture: where the shared data
directory beside the checkout (`../shared/data`) is missing, each of them is skipped with
one reason that names the path, instead of some failing and some skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """Tiny Shakespeare (nanoGPT's character-level corpus) from ../shared/data."""
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"needs {path}: the shared data directory beside the checkout")
    return path

"""Shared test helpers. Real clips live in tests/data (see tests/data/SOURCES.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for loose transcript comparisons."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()

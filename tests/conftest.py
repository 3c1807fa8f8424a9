"""Shared test fixtures: where the real data lives (``../shared/data``, or ``$MEDLATENT_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _data_root() -> Path:
    return Path(os.environ.get("MEDLATENT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder. Real-data tests are part of the suite: a missing folder fails them."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"real data not found at {root}: put ../shared/data beside the repository or set MEDLATENT_DATA")
    return root


@pytest.fixture(scope="session")
def ixi_dir(data_dir: Path) -> Path:
    return data_dir / "ixi_t1_2mm"

"""Fixtures for keys/: two Parties on tmp_path, cheap scrypt so tests stay fast."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from keys import Identity, ScryptParams, generate_identity

CHEAP = ScryptParams(n=2**12)
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def kz_dir(tmp_path: Path) -> Path:
    return tmp_path / "kz"


@pytest.fixture
def by_dir(tmp_path: Path) -> Path:
    return tmp_path / "by"


@pytest.fixture
def kz(kz_dir: Path) -> Identity:
    return generate_identity(
        kz_dir,
        "KZ",
        "Prosecutor General's Office of Kazakhstan",
        "https://kz.prolink.example:8443",
        NOW,
        scrypt=CHEAP,
    )


@pytest.fixture
def by(by_dir: Path) -> Identity:
    return generate_identity(
        by_dir, "BY", "Prosecutor General's Office of Belarus", "https://127.0.0.1:9443", NOW, scrypt=CHEAP
    )

"""Two real nodes: ``prolink serve`` processes over mutual TLS on loopback.

Each Party gets its own data directory and database (SQLite file, or a fresh
PostgreSQL database), its users and each other's bundle, exactly as the CLI
would set them up; then both run as separate processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.demo import DemoParty, introduce, setup_party, start, stop, wait_ready

NAMES = {
    "KZ": "Генеральная прокуратура Республики Казахстан",
    "BY": "Генеральная прокуратура Республики Беларусь",
}


@dataclass
class Pair:
    kz: DemoParty
    by: DemoParty
    log_dir: Path

    def start(self, *parties: DemoParty, env: dict[str, str] | None = None) -> None:
        for p in parties or (self.kz, self.by):
            start(p, self.log_dir, env)
        for p in parties or (self.kz, self.by):
            wait_ready(p)

    def stop(self, *parties: DemoParty, kill: bool = False) -> None:
        for p in parties or (self.kz, self.by):
            stop(p, kill=kill)

    def log(self, p: DemoParty) -> str:
        path = self.log_dir / f"{p.party.lower()}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, p: DemoParty) -> list[dict[str, Any]]:
        """The node's structured log: its JSON lines, parsed (other lines, from uvicorn, left out)."""
        events = []
        for line in self.log(p).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pair_builder(
    tmp_path: Path, postgres_database: Callable[[], str] | None, pairs: list[Pair]
) -> Callable[..., Pair]:
    def build(backend: str = "sqlite", **settings: Any) -> Pair:
        urls = {
            party: (postgres_database() if backend == "postgres" and postgres_database else None)
            for party in ("KZ", "BY")
        }
        root = tmp_path / f"pair{len(pairs)}"
        root.mkdir()
        # Keys are back-dated a month so tests can seal envelopes "sent" in the past.
        kz = setup_party(root, "KZ", NAMES["KZ"], urls["KZ"], backdate=timedelta(days=30), **settings)
        by = setup_party(root, "BY", NAMES["BY"], urls["BY"], backdate=timedelta(days=30), **settings)
        introduce(kz, by)
        introduce(by, kz)
        pair = Pair(kz, by, root)
        pairs.append(pair)
        return pair

    return build


@pytest.fixture
def make_pair(tmp_path: Path, postgres_database: Callable[[], str]) -> Iterator[Callable[..., Pair]]:
    """Build (not start) a KZ/BY pair on ``backend`` ('sqlite' or 'postgres')."""
    pairs: list[Pair] = []
    yield pair_builder(tmp_path, postgres_database, pairs)
    for pair in pairs:
        pair.stop(kill=True)


@pytest.fixture(scope="module")
def shared_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One started SQLite pair for a whole module of scenario tests (each test uses its own threads)."""
    pairs: list[Pair] = []
    pair = pair_builder(tmp_path_factory.mktemp("shared"), None, pairs)("sqlite")
    pair.start()
    yield pair
    pair.stop(kill=True)


@pytest.fixture
def pair(make_pair: Callable[..., Pair], backend: str) -> Iterator[Pair]:
    """A started pair on each backend."""
    p = make_pair(backend)
    p.start()
    yield p

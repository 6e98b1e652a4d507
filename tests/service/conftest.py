"""Fixtures shared by the service tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from keys import Signatory
from service import demo
from service.db import make_engine, session_scope
from service.migrate import upgrade
from service.models import User
from service.node import Node
from service.server import build_node


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database (SQLite, then PostgreSQL), disposed after the test."""
    upgrade(database_url)
    eng = make_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def node_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """KZ and BY set up as the CLI would, each the other's peer, as nodes in this process (no server, no
    worker: the test drives them), on SQLite, then on PostgreSQL."""
    urls: dict[str, str | None] = {"KZ": None, "BY": None}
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_database")
        urls = {"KZ": make(), "BY": make()}
    kz_party = demo.setup_party(tmp_path, "KZ", "Kaz", urls["KZ"])
    by_party = demo.setup_party(tmp_path, "BY", "Bel", urls["BY"])
    demo.introduce(kz_party, by_party)
    demo.introduce(by_party, kz_party)
    kz, by = build_node(kz_party.data_dir), build_node(by_party.data_dir)
    yield kz, by
    kz.engine.dispose()
    by.engine.dispose()


def signatory_of(node: Node) -> Signatory:
    """The signatory ``demo.setup_party`` gave the node (its one user with a signing key)."""
    with session_scope(node.engine, readonly=True) as s:
        key_id = s.execute(
            select(User.signatory_key_id).where(User.signatory_key_id.is_not(None))
        ).scalar_one()  # type: ignore[union-attr]
    return node.signatory(key_id)

"""Fixtures for the audit log tests: in-process nodes on SQLite or PostgreSQL, and the two-node pair.

``make_node(party, backend)`` initialises a Party as ``prolink init`` would
(identity, node.json, migrated database) and returns a ``Node`` object in this
process, without servers; ``introduce`` makes two of them peers. The real
two-process fixtures (``make_pair``, ``backend``) come from the integration
tests.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service import audit
from service.audit_heads import HeadPublisher
from service.audit_witness import accept_head
from service.db import make_engine, session_scope
from service.node import Node, record_event
from tests.integration.conftest import backend, make_pair  # noqa: F401  (fixtures for the two-node test)

NAMES = {
    "KZ": "Генеральная прокуратура Республики Казахстан",
    "BY": "Генеральная прокуратура Республики Беларусь",
}


@pytest.fixture
def make_node(tmp_path: Path, postgres_database: Callable[[], str]) -> Iterator[Callable[..., Node]]:
    from keys import generate_identity, load_identity
    from service.migrate import upgrade
    from service.settings import Settings

    nodes: list[Node] = []

    def build(party: str = "KZ", database: str = "sqlite", **settings: Any) -> Node:
        data_dir = tmp_path / f"{party.lower()}-{len(nodes)}"
        url = postgres_database() if database == "postgres" else ""
        port = 9000 + len(nodes)
        config = Settings(
            data_dir=data_dir,
            party=party,
            party_name=NAMES.get(party, party),
            public_url=f"https://127.0.0.1:{port}",
            peer_port=port,
            database_url=url,
            **settings,
        )
        generate_identity(
            config.data_dir,
            party,
            config.party_name,
            config.public_url,
            datetime.now(UTC) - timedelta(days=30),
        )
        config.save()
        upgrade(config.database_url)
        node = Node(config, load_identity(config.data_dir), make_engine(config.database_url))
        nodes.append(node)
        return node

    yield build
    for node in nodes:
        node.engine.dispose()


def introduce(a: Node, b: Node) -> None:
    """Each node trusts the other's bundle (checked against its fingerprint)."""
    a.add_peer(b.identity.bundle_bytes(), b.identity.fingerprint)
    b.add_peer(a.identity.bundle_bytes(), a.identity.fingerprint)


def log_events(
    node: Node,
    n: int,
    *,
    start: int = 0,
    party: str | None = "BY",
    kind: str = "message.received",
    at: datetime | None = None,
) -> None:
    """``n`` events, each in its own transaction, as the node's operations record them."""
    for i in range(start, start + n):
        with session_scope(node.engine) as s:
            record_event(
                s,
                at or node.clock(),
                kind,
                "accepted",
                party=party,
                object_id=f"msg-{i:06d}",
                envelope_sha256=f"{i:064x}",
                kind="request",
                purpose_code="criminal_case",
            )


def sign(node: Node) -> audit.Head | None:
    return HeadPublisher(node).sign()


def cosign(witness: Node, node: Node) -> dict[str, Any]:
    """``witness`` judges ``node``'s newest head as over the peer API; a cosignature is stored at ``node``."""
    publisher = HeadPublisher(node)
    with session_scope(node.engine, readonly=True) as s:
        head = audit.latest_head(s)
        base = audit.cosigned_sizes(s, witness.party) or 0
    assert head is not None
    answer = accept_head(witness, node.party, publisher._request(head, base))
    if answer.status == 409 and answer.body.get("error", {}).get("code") == "audit.base_mismatch":
        answer = accept_head(witness, node.party, publisher._request(head, answer.body["accepted"]["size"]))
    if answer.status == 200:
        publisher._store(witness.party, head, answer.body["cosignature"])
    return {"status": answer.status, **answer.body}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

"""The audit log in the database: every event is a leaf, appends are dense and serialised, proofs at any size.

Each test runs on SQLite and on PostgreSQL (``database_url``).
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

import protocol
from protocol import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from service import audit
from service.db import make_engine, session_scope
from service.migrate import upgrade
from service.models import AuditNode, Event
from service.node import record_event

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def events(engine) -> list[Event]:  # type: ignore[no-untyped-def]
    with session_scope(engine, readonly=True) as s:
        return list(s.execute(select(Event).order_by(Event.seq)).scalars())  # type: ignore[arg-type]


def test_every_event_becomes_the_next_leaf_with_canonical_bytes(engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        record_event(
            s,
            T0,
            "message.sealed",
            "ok",
            actor="user:3",
            party="BY",
            object_id="m-1",
            envelope_sha256="ab" * 32,
            kind="request",
        )
        record_event(s, T0, "message.queued", "ok", party="BY", object_id="m-1")
    with session_scope(engine) as s:
        record_event(
            s,
            T0 + timedelta(seconds=1),
            "receipt.received",
            "accepted",
            party="BY",
            object_id="m-1",
            receipt_sha256="cd" * 32,
        )
    rows = events(engine)
    assert [r.seq for r in rows] == [0, 1, 2]
    first = protocol.parse_entry(rows[0].entry)
    assert first == {
        "v": 1,
        "seq": 0,
        "at": "2026-03-01T09:00:00.000000Z",
        "actor": "user:3",
        "party": "BY",
        "type": "message.sealed",
        "object_id": "m-1",
        "outcome": "ok",
        "detail": {"envelope_sha256": "ab" * 32, "kind": "request"},
    }
    assert all(r.leaf_hash == leaf_hash(r.entry) for r in rows)
    with engine.connect() as conn:
        assert audit.size(conn) == 3
        assert audit.current(conn).root() == protocol.root_of(r.leaf_hash for r in rows)
        assert audit.root_at(conn, 2) == protocol.root_of(r.leaf_hash for r in rows[:2])


def test_a_rolled_back_transaction_leaves_no_entry(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        record_event(s, T0, "message.sealed", "ok", object_id="m-1")
        s.flush()
        raise RuntimeError("the state change failed")
    with session_scope(engine) as s:
        record_event(s, T0, "message.sealed", "ok", object_id="m-2")
    assert [(r.seq, r.object_id) for r in events(engine)] == [(0, "m-2")]


def test_content_and_secrets_are_refused(engine) -> None:  # type: ignore[no-untyped-def]
    for key in ("content", "token", "passphrase", "summary"):
        with pytest.raises(ValueError, match="never holds content or secrets"), session_scope(engine) as s:
            record_event(s, T0, "message.read", "ok", **{key: "x"})
    with pytest.raises(ValueError, match="naive"), session_scope(engine) as s:
        record_event(s, datetime(2026, 1, 1), "x", "ok")
    assert events(engine) == []


def test_proofs_and_roots_at_every_size_match_the_in_memory_tree(engine) -> None:  # type: ignore[no-untyped-def]
    n = 70
    with engine.begin() as conn:
        audit.append_rows(
            conn,
            [
                audit.NewEntry(T0, "node", "BY", "message.received", f"m-{i}", "accepted", {})
                for i in range(n)
            ],
        )
    rows = events(engine)
    tree = MemoryTree(r.leaf_hash for r in rows)
    with engine.connect() as conn:
        # Every perfect subtree is stored once: 1/2 + 1/4 + ... of n.
        assert conn.execute(select(func.count()).select_from(AuditNode)).scalar_one() == sum(
            n >> level for level in range(1, 8)
        )
        for size in (1, 2, 3, 8, 9, 31, 64, 65, 70):
            root = audit.root_at(conn, size)
            assert root == tree.root(size)
            for index in {0, size // 2, size - 1}:
                proof = audit.inclusion(conn, index, size)
                assert proof == tree.inclusion_proof(index, size)
                verify_inclusion(tree.get(0, index), index, size, proof, root)
            for old in {0, 1, size // 3, size - 1, size}:
                proof = audit.consistency(conn, old, size)
                assert proof == tree.consistency_proof(old, size)
                verify_consistency(old, size, tree.root(old), root, proof)
            assert audit.compact_range_at(conn, size).root() == root


@pytest.mark.parametrize("replicas", [1, 3])
def test_concurrent_appends_are_serialised_without_gaps(database_url: str, replicas: int) -> None:
    """Several threads (and, with ``replicas`` > 1, several engines, as replicas would) append at once."""
    upgrade(database_url)
    engines = [make_engine(database_url) for _ in range(replicas)]
    threads, per_thread, errors = 6, 25, []

    def work(k: int) -> None:
        eng = engines[k % replicas]
        try:
            for i in range(per_thread):
                with session_scope(eng) as s:
                    record_event(s, T0, "message.received", "accepted", party="BY", object_id=f"t{k}-{i}")
                    if i % 5 == 0:
                        record_event(s, T0, "receipt.issued", "accepted", party="BY", object_id=f"t{k}-{i}")
        except Exception as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    rows = events(engines[0])
    total = threads * (per_thread + per_thread // 5)
    assert [r.seq for r in rows] == list(range(total))
    assert all(protocol.parse_entry(r.entry)["seq"] == r.seq for r in rows)
    # Within one transaction the two events are adjacent and in the order they were recorded.
    for a, b in itertools.pairwise(rows):
        if b.type == "receipt.issued":
            assert a.type == "message.received" and a.object_id == b.object_id
    with engines[0].connect() as conn:
        assert audit.current(conn).root() == protocol.root_of(r.leaf_hash for r in rows)
    for eng in engines:
        eng.dispose()


def test_migration_appends_the_events_recorded_before_the_log_existed(database_url: str) -> None:
    upgrade(database_url, "0001")
    eng = make_engine(database_url)
    with eng.begin() as conn:
        for i in range(5):
            conn.execute(
                text(
                    "INSERT INTO event (at, actor, party, type, object_id, outcome, detail) "
                    "VALUES (:at, 'node', 'BY', 'peer.added', :oid, 'ok', :detail)"
                ),
                {"at": T0 + timedelta(minutes=i), "oid": f"o{i}", "detail": '{"bundle_version": 1}'},
            )
    upgrade(database_url)
    rows = events(eng)
    assert [r.seq for r in rows] == [0, 1, 2, 3, 4]
    assert protocol.parse_entry(rows[3].entry)["detail"] == {"bundle_version": 1}
    with session_scope(eng) as s:
        record_event(s, T0 + timedelta(hours=1), "peer.added", "ok", object_id="o5")
    rows = events(eng)
    with eng.connect() as conn:
        assert audit.current(conn).root() == protocol.root_of(r.leaf_hash for r in rows)
    eng.dispose()

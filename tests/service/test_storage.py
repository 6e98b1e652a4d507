"""The storage layer on SQLite and PostgreSQL: schema, envelope blobs, delivery outbox.

Each test that takes ``database_url`` runs twice, once per backend. What they
pin down: migrations alone build the schema the models describe; a
multi-megabyte envelope goes in and out in bounded memory; the outbox retries
with backoff, parks at the age limit, and never hands out a row twice or a
delivered row again (DESIGN.md, "Delivery").
"""

from __future__ import annotations

import hashlib
import random
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, event, insert, inspect, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from service import audit, outbox
from service.blobs import (
    BlobCorrupt,
    BlobNotFound,
    BlobTooLarge,
    blob_bytes,
    blob_info,
    read_blob,
    small_blobs,
    write_blob,
    write_blobs,
    write_small_blobs,
)
from service.db import commit_pipelined, make_engine, read_together, session_scope, write_pipelined
from service.migrate import current_revisions, downgrade, head_revisions, is_up_to_date, upgrade
from service.models import BLOB_CHUNK_SIZE, Blob, BlobChunk, Event, Message, Meta, Outbox, Peer, User
from service.node import event_entry, record_events
from service.settings import Settings
from tests.integration.helpers import wait_for

MiB = 1024 * 1024
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TABLES = {"peer", "user_account", "blob", "blob_chunk", "message", "outbox", "event", "meta"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        party="KZ",
        delivery_backoff_base_seconds=1.0,
        delivery_backoff_max_seconds=300.0,
        delivery_max_age_seconds=3 * 24 * 3600,
    )


def add_peer(engine: Engine, party: str = "BY") -> None:
    with session_scope(engine) as s:
        s.add(
            Peer(
                party=party,
                name=f"Prosecutor General's Office {party}",
                endpoint=f"https://{party.lower()}.example:8443",
                fingerprint="ab" * 32,
                bundle=b"signed bundle bytes",
                bundle_version=1,
                added_at=T0,
            )
        )


def add_outgoing(
    engine: Engine, message_id: str, now: datetime = T0, peer: str = "BY", thread_id: str | None = None
) -> int:
    """An outgoing message with a small envelope, enqueued; returns the outbox id."""
    with session_scope(engine) as s:
        blob = write_blob(s, [message_id.encode()])
        s.add(
            Message(
                id=message_id,
                direction="out",
                peer=peer,
                kind="request",
                thread_id=thread_id,
                envelope_sha256=blob.sha256,
                envelope_size=blob.size,
                blob_id=blob.id,
                created_at=now,
                status="queued",
                summary={"kind": "request"},
            )
        )
        outbox.enqueue_many(s, [(message_id, peer, now)])
        return int(s.execute(select(Outbox.id).where(Outbox.message_id == message_id)).scalar_one())


def outbox_row(engine: Engine, outbox_id: int) -> Outbox:
    with session_scope(engine, readonly=True) as s:
        row = s.get(Outbox, outbox_id)
        assert row is not None
        return row


def message_row(engine: Engine, message_id: str) -> Message:
    with session_scope(engine, readonly=True) as s:
        row = s.get(Message, (message_id, "out"))
        assert row is not None
        return row


# -- schema -------------------------------------------------------------------------


def test_migrations_build_the_models_schema_from_scratch(database_url: str) -> None:
    assert current_revisions(database_url) == ()
    assert not is_up_to_date(database_url)
    upgrade(database_url)
    assert current_revisions(database_url) == head_revisions() != ()
    assert is_up_to_date(database_url)
    upgrade(database_url)  # idempotent

    eng = make_engine(database_url)
    try:
        assert set(inspect(eng).get_table_names()) >= TABLES
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == [], f"migrations and models disagree: {diff}"
    finally:
        eng.dispose()

    downgrade(database_url, "base")
    eng = make_engine(database_url)
    try:
        assert not TABLES & set(inspect(eng).get_table_names())
    finally:
        eng.dispose()
    upgrade(database_url)
    assert is_up_to_date(database_url)


def test_no_index_but_the_key_starts_with_a_column_of_a_key_that_a_foreign_key_refers_to() -> None:
    """PostgreSQL checks a foreign key with a plan made once per connection, often while the table is
    small: an index led by part of the referred key can then win over the key's own, and every check
    reads every row that shares that part (migration 0005)."""
    tables = SQLModel.metadata.tables
    trapped = []
    for table in tables.values():
        for fk in table.foreign_key_constraints:
            referred = tables[fk.referred_table.name]
            key = {element.column.name for element in fk.elements}
            for index in referred.indexes:
                lead = next(iter(index.columns)).name
                if lead in key and {c.name for c in index.columns} != key:
                    trapped.append(f"{referred.name}.{index.name} (for {table.name} {sorted(key)})")
    assert trapped == []


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_outbox_foreign_key_check_reads_one_message_however_many_were_sent_postgres(
    engine: Engine, database_url: str
) -> None:
    """Sends on one pooled connection from an empty table on (the check's plan is cached from the
    first): each check reads the one message it refers to, not all outgoing ones."""
    sends = 200
    add_peer(engine)
    for i in range(sends):
        add_outgoing(engine, f"m-{i}")
    engine.dispose()  # the server processes end and publish their statistics

    reads = server_statistics(
        database_url,
        "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'message'",
        lambda found: found.get("pk_message", 0) >= sends,
    )
    assert reads.get("pk_message", 0) >= sends, reads  # one check per outbox row, through the key
    assert sum(reads.values()) <= 2 * sends, reads  # and nothing much besides (quadratic before 0005)


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_message_status_update_writes_no_index_entries_postgres(engine: Engine, database_url: str) -> None:
    """Queued, in flight, delivered: the status and receipt change in place on the page (a HOT update)."""
    add_peer(engine)
    add_outgoing(engine, "m-1")
    for status in ("in_flight", "delivered"):
        with session_scope(engine) as s:
            s.execute(update(Message).where(Message.id == "m-1").values(status=status, receipt=b"r" * 400))
    with engine.connect() as conn:  # room is kept on each page for them (a page of one row had it anyway)
        options = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'message'"
        ).scalar_one()
    engine.dispose()
    counts = server_statistics(
        database_url,
        "SELECT unnest(ARRAY['updates', 'in place']), "
        "unnest(ARRAY[n_tup_upd, n_tup_hot_upd]) FROM pg_stat_user_tables "
        "WHERE relname = 'message'",
        lambda found: found.get("updates", 0) >= 2,
    )
    assert counts == {"updates": 2, "in place": 2}
    assert options == ["fillfactor=80"]


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_an_envelope_chunk_is_never_compressed_and_a_small_one_stays_in_its_row_postgres(
    engine: Engine,
) -> None:
    """Ciphertext does not compress; a 4 KB envelope (a document without attachments) is not moved out of
    line into the TOAST table, a 100 KB chunk is (migration 0006)."""
    rng = random.Random(6)
    small, big = rng.randbytes(4400), rng.randbytes(100_000)
    toast_size = "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'blob_chunk'"
    with session_scope(engine) as s:
        small_id = write_blob(s, [small]).id
    with engine.connect() as conn:
        assert conn.exec_driver_sql(toast_size).scalar_one() == 0
    with session_scope(engine) as s:
        big_id = write_blob(s, [big]).id
    with engine.connect() as conn:
        assert conn.exec_driver_sql(toast_size).scalar_one() > 0
        storage = conn.exec_driver_sql(
            "SELECT attstorage FROM pg_attribute WHERE attname = 'data' AND attrelid = 'blob_chunk'::regclass"
        ).scalar_one()
    assert storage == "e"  # external: out of line when it must be, never compressed
    assert blob_bytes(engine, small_id) == small and blob_bytes(engine, big_id) == big


def server_statistics(
    database_url: str, query: str, complete: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    """(name, count) rows of a PostgreSQL statistics ``query``, read again until ``complete`` (they are
    published a moment after the server processes that gathered them end)."""
    checker = make_engine(database_url)

    def read() -> dict[str, int]:
        with checker.connect() as conn:
            return {str(name): int(n) for name, n in conn.exec_driver_sql(query)}

    try:
        found: dict[str, int] = wait_for(f"statistics: {query}", lambda: complete(got := read()) and got, 10)
        return found
    finally:
        checker.dispose()


def test_constraints_are_enforced(engine: Engine) -> None:
    add_peer(engine)
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # unknown peer
        blob = write_blob(s, [b"x"])
        s.add(
            Message(
                id="m",
                direction="out",
                peer="XX",
                envelope_sha256=blob.sha256,
                envelope_size=1,
                blob_id=blob.id,
                created_at=T0,
                status="queued",
            )
        )
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # bad status
        blob = write_blob(s, [b"x"])
        s.add(
            Message(
                id="m",
                direction="out",
                peer="BY",
                envelope_sha256=blob.sha256,
                envelope_size=1,
                blob_id=blob.id,
                created_at=T0,
                status="lost",
            )
        )
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # duplicate token
        s.add(User(name="a", role="clerk", token_hash="0" * 64, created_at=T0))
        s.add(User(name="b", role="reader", token_hash="0" * 64, created_at=T0))
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # unknown role
        s.add(User(name="c", role="admin", token_hash="1" * 64, created_at=T0))


def test_rows_round_trip_with_aware_utc_times(engine: Engine) -> None:
    add_peer(engine)
    local = datetime(2025, 3, 1, 15, 30, tzinfo=UTC).astimezone()  # any zone in, UTC out
    with session_scope(engine) as s:
        s.add(User(name="Clerk", role="clerk", token_hash="f" * 64, created_at=local))
        s.add(
            Event(
                at=local,
                actor="node",
                party="BY",
                type="peer.added",
                object_id="BY",
                outcome="ok",
                detail={"version": 1},
            )
        )
        s.add(Meta(key="party", value="KZ"))
    with session_scope(engine, readonly=True) as s:
        user = s.exec(select(User).where(User.name == "Clerk")).one()
        assert user.created_at == local and user.created_at.tzinfo == UTC
        assert user.clearance == "unrestricted" and user.disabled is False
        event = s.exec(select(Event)).one()
        assert event.detail == {"version": 1} and event.id is not None
        assert s.get(Peer, "BY").status == "active"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="naive"), session_scope(engine) as s:
        s.add(Meta(key="k", value="v"))
        s.add(Event(at=datetime(2025, 1, 1), actor="node", type="x", outcome="ok"))


# -- blobs --------------------------------------------------------------------------


def _pieces(total: int, seed: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in pieces of awkward sizes."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(total - sent, rng.choice([1, 7, 4096, 65_537, 300_000, MiB + 3]))
        yield rng.randbytes(n)
        sent += n


def test_blob_round_trip_of_20_mib_in_bounded_memory(engine: Engine) -> None:
    total = 20 * MiB
    expected = hashlib.sha256()
    for piece in _pieces(total, seed=1):
        expected.update(piece)

    tracemalloc.start()
    try:
        with session_scope(engine) as s:
            info = write_blob(s, _pieces(total, seed=1))
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        got = hashlib.sha256()
        size = 0
        chunks = 0
        for chunk in read_blob(engine, info.id):
            assert len(chunk) <= BLOB_CHUNK_SIZE
            got.update(chunk)
            size += len(chunk)
            chunks += 1
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.size == size == total
    assert info.sha256 == got.hexdigest() == expected.hexdigest()
    assert chunks == total // BLOB_CHUNK_SIZE
    assert write_peak < 8 * MiB, f"write peak {write_peak / MiB:.1f} MiB"
    assert read_peak < 8 * MiB, f"read peak {read_peak / MiB:.1f} MiB"


def test_blob_edge_cases(engine: Engine) -> None:
    with session_scope(engine) as s:
        empty = write_blob(s, [])
        odd = write_blob(s, [b"", b"a" * (BLOB_CHUNK_SIZE - 1), b"bc", b""])
        assert list(read_blob(s, empty.id)) == []  # readable inside the writing transaction
    assert empty.size == 0 and empty.sha256 == hashlib.sha256(b"").hexdigest()
    assert blob_bytes(engine, empty.id) == b""
    data = b"a" * (BLOB_CHUNK_SIZE - 1) + b"bc"
    assert blob_bytes(engine, odd.id) == data
    assert [len(c) for c in read_blob(engine, odd.id)] == [BLOB_CHUNK_SIZE, 1]
    assert blob_info(engine, odd.id) == odd
    with pytest.raises(BlobTooLarge):
        blob_bytes(engine, odd.id, max_size=100)
    with pytest.raises(BlobNotFound):
        list(read_blob(engine, 10_000))


def test_blob_over_the_limit_is_refused_without_reading_on(engine: Engine) -> None:
    consumed = []

    def pieces() -> Iterator[bytes]:
        for i in range(100):
            consumed.append(i)
            yield b"x" * 1000

    with pytest.raises(BlobTooLarge), session_scope(engine) as s:
        write_blob(s, pieces(), max_size=2500)
    assert len(consumed) == 3
    with session_scope(engine, readonly=True) as s:  # rolled back: nothing stored
        assert s.exec(select(BlobChunk)).first() is None


def test_small_blobs_reads_several_whole_blobs_in_order_and_verifies_each(engine: Engine) -> None:
    contents = [b"a" * 10, b"b" * (BLOB_CHUNK_SIZE + 5), b"", b"c" * 3]
    with session_scope(engine) as s:
        ids = [write_blob(s, [c]).id for c in contents]
    assert small_blobs(engine, [ids[3], ids[0], ids[1], ids[2], ids[0]]) == [
        contents[3],
        contents[0],
        contents[1],
        contents[2],
        contents[0],
    ]
    with pytest.raises(BlobTooLarge):
        small_blobs(engine, ids, max_total=BLOB_CHUNK_SIZE)
    with pytest.raises(BlobNotFound):
        small_blobs(engine, [ids[0], 10**9])
    with session_scope(engine) as s:
        s.connection().execute(
            update(BlobChunk).where(BlobChunk.blob_id == ids[1], BlobChunk.seq == 1).values(data=b"x" * 5)
        )
    with pytest.raises(BlobCorrupt):
        small_blobs(engine, [ids[0], ids[1]])
    with session_scope(engine) as s:
        s.connection().execute(
            BlobChunk.__table__.delete().where(  # type: ignore[attr-defined]
                BlobChunk.blob_id == ids[1], BlobChunk.seq == 0
            )
        )
    with pytest.raises(BlobCorrupt, match="missing"):
        small_blobs(engine, [ids[1]])


def test_write_small_blobs_stores_each_as_write_blob_would_in_the_order_given(engine: Engine) -> None:
    contents = [b"a" * 10, b"", b"b" * 25, b"c" * 8, bytes(range(256)) * 3]
    with session_scope(engine) as s:
        one_by_one = [write_blob(s, [c], chunk_size=8) for c in contents]
        together = write_small_blobs(s, contents, chunk_size=8)
        assert write_small_blobs(s, []) == []
    assert [(b.sha256, b.size) for b in together] == [(b.sha256, b.size) for b in one_by_one]
    assert len({b.id for b in together + one_by_one}) == 2 * len(contents)
    for blob, content in zip(together, contents, strict=True):
        assert blob_info(engine, blob.id) == blob
        assert b"".join(read_blob(engine, blob.id)) == content  # verified against the stored hash
    with session_scope(engine, readonly=True) as s:
        counts = {b.id: s.get(Blob, b.id).chunk_count for b in together}  # type: ignore[union-attr]
    assert [counts[b.id] for b in together] == [2, 0, 4, 1, 96]  # cut as write_blob cuts


def test_write_blobs_stores_bytes_together_and_streams_alone_within_the_size_limit(engine: Engine) -> None:
    with session_scope(engine) as s:
        in_memory = write_blobs(s, [b"a" * 10, b"b" * 20], max_size=20)
        mixed = write_blobs(s, [b"c" * 5, iter([b"d" * 7, b"e" * 8])], max_size=20)
    assert [b"".join(read_blob(engine, b.id)) for b in in_memory + mixed] == [
        b"a" * 10,
        b"b" * 20,
        b"c" * 5,
        b"d" * 7 + b"e" * 8,
    ]
    for too_big in ([b"f" * 21], [iter([b"g" * 15, b"h" * 15])]):  # in memory or streamed: refused alike
        with pytest.raises(BlobTooLarge), session_scope(engine) as s:
            write_blobs(s, too_big, max_size=20)


def test_write_small_blobs_rolls_back_with_its_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        ids = [b.id for b in write_small_blobs(s, [b"x" * 10, b"y" * 20])]
        raise RuntimeError("the caller's transaction fails")
    for blob_id in ids:
        with pytest.raises(BlobNotFound):
            blob_info(engine, blob_id)


def test_enqueue_many_queues_each_message_due_at_once(engine: Engine) -> None:
    add_peer(engine)
    ids = [add_outgoing(engine, f"m-{i}") for i in range(3)]  # each queued alone, as a single send is
    assert len(set(ids)) == 3  # an outbox row each
    with session_scope(engine) as s:
        for i, blob in zip(range(3, 6), write_small_blobs(s, [b"a", b"b", b"c"]), strict=True):
            s.add(
                Message(
                    id=f"m-{i}",
                    direction="out",
                    peer="BY",
                    kind="request",
                    status="queued",
                    envelope_sha256=blob.sha256,
                    envelope_size=blob.size,
                    blob_id=blob.id,
                    created_at=T0,
                    summary={},
                )
            )
        outbox.enqueue_many(s, [(f"m-{i}", "BY", T0) for i in range(3, 6)])  # (it flushes the messages first)
        outbox.enqueue_many(s, [])
    claimed = outbox.claim_due(engine, "w", T0, 10, 60.0).claims
    assert sorted(c.message_id for c in claimed) == [f"m-{i}" for i in range(6)]


def test_altered_or_missing_chunks_are_detected(engine: Engine) -> None:
    with session_scope(engine) as s:
        info = write_blob(s, [b"1" * (2 * BLOB_CHUNK_SIZE + 10)])
    with session_scope(engine) as s:
        s.connection().execute(
            update(BlobChunk).where(BlobChunk.blob_id == info.id, BlobChunk.seq == 1).values(data=b"2" * 10)
        )
    with pytest.raises(BlobCorrupt):
        list(read_blob(engine, info.id))
    with session_scope(engine) as s:
        s.connection().execute(BlobChunk.__table__.delete().where(BlobChunk.seq == 1))  # type: ignore[attr-defined]
    with pytest.raises(BlobCorrupt, match="missing"):
        list(read_blob(engine, info.id))


# -- outbox -------------------------------------------------------------------------


def test_claim_passes_over_busy_peers_and_takes_their_rows_once_they_are_free(engine: Engine) -> None:
    add_peer(engine, "BY")
    add_peer(engine, "CN")
    add_outgoing(engine, "m-by", peer="BY")
    add_outgoing(engine, "m-cn", peer="CN")
    result = outbox.claim_due(engine, "w", T0, 10, busy_peers=["BY"])
    assert [c.message_id for c in result.claims] == ["m-cn"] and not result.more
    assert message_row(engine, "m-by").status == "queued"
    # Only a busy peer's rows are due: nothing is claimed (the read finds nothing, no write is made).
    assert outbox.claim_due(engine, "w", T0, 10, busy_peers=["BY"]).claims == []
    [c] = outbox.claim_due(engine, "w", T0, 10).claims  # BY's delivery ended
    assert c.message_id == "m-by" and c.attempts == 1


def _writes(engine: Engine) -> list[str]:
    """The statements run on ``engine`` from now on that write or take the write lock: SQLite's
    ``BEGIN IMMEDIATE``, an ``UPDATE``, ``INSERT`` or ``DELETE``. (PostgreSQL's claim reads its candidates
    ``FOR UPDATE SKIP LOCKED``; a read that finds nothing locks nothing.)"""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(("BEGIN IMMEDIATE", "UPDATE", "INSERT", "DELETE")):
            seen.append(statement)

    return seen


def test_claim_makes_no_write_while_only_a_busy_or_suspended_peers_rows_are_due(engine: Engine) -> None:
    add_peer(engine, "BY")
    add_peer(engine, "CN")
    with session_scope(engine) as s:
        s.execute(update(Peer).where(Peer.party == "CN").values(status="suspended"))
    add_outgoing(engine, "m-by", peer="BY")
    add_outgoing(engine, "m-cn", peer="CN")  # held while CN is suspended
    writes = _writes(engine)
    assert outbox.claim_due(engine, "w", T0, 10, busy_peers=["BY"]).claims == []
    assert writes == []  # the read found nothing deliverable: no write lock, no commit
    assert [c.message_id for c in outbox.claim_due(engine, "w", T0, 10).claims] == ["m-by"]
    assert writes  # a real claim does lock


def test_claim_leases_a_row_and_an_expired_lease_is_claimed_again(engine: Engine) -> None:
    add_peer(engine)
    oid = add_outgoing(engine, "m-1")
    assert outbox.claim(engine, "w1", T0 - timedelta(seconds=1)) == []  # not due yet

    [c] = outbox.claim(engine, "w1", T0, lease_seconds=60)
    assert (c.outbox_id, c.message_id, c.peer, c.attempts, c.worker_id) == (oid, "m-1", "BY", 1, "w1")
    assert c.envelope_sha256 == hashlib.sha256(b"m-1").hexdigest() and c.envelope_size == 3
    assert message_row(engine, "m-1").status == "in_flight"
    assert outbox.claim(engine, "w2", T0 + timedelta(seconds=59)) == []  # leased

    [again] = outbox.claim(engine, "w2", T0 + timedelta(seconds=60))  # w1 died
    assert again.outbox_id == oid and again.attempts == 2 and again.worker_id == "w2"
    # The worker that lost its lease can neither extend it nor requeue the row.
    with session_scope(engine) as s:
        assert not outbox.extend_lease(s, oid, "w1", T0 + timedelta(seconds=61), 60)
        assert (
            outbox.mark_failed(
                s,
                oid,
                "late",
                T0 + timedelta(seconds=61),
                Settings(data_dir=Path("."), party="KZ"),
                worker_id="w1",
            )
            is None
        )
        assert outbox.extend_lease(s, oid, "w2", T0 + timedelta(seconds=61), 600)
    assert outbox_row(engine, oid).state == "in_flight"
    assert outbox.claim(engine, "w3", T0 + timedelta(seconds=200)) == []  # lease extended


def test_failure_backs_off_then_retries(engine: Engine, settings: Settings) -> None:
    add_peer(engine)
    oid = add_outgoing(engine, "m-1")
    now = T0
    for attempt in range(1, 8):
        [c] = outbox.claim(engine, "w", now)
        assert c.attempts == attempt
        with session_scope(engine) as s:
            state = outbox.mark_failed(
                s, oid, "connection refused", now, settings, worker_id="w", rng=random.Random(attempt)
            )
        assert state == "queued"
        row = outbox_row(engine, oid)
        ceiling = min(settings.delivery_backoff_max_seconds, 2 ** (attempt - 1))
        delay = (row.next_attempt_at - now).total_seconds()
        assert 0 <= delay <= ceiling
        assert row.last_error == "connection refused" and row.claimed_by is None
        assert message_row(engine, "m-1").status == "queued"
        if delay > 0.001:
            assert outbox.claim(engine, "w", row.next_attempt_at - timedelta(milliseconds=1)) == []
        now = row.next_attempt_at
    assert outbox_row(engine, oid).attempts == 7


@given(attempts=st.integers(min_value=0, max_value=10_000), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_an_exponential_cap(attempts: int, seed: int) -> None:
    delay = outbox.backoff_delay(attempts, 1.0, 300.0, random.Random(seed))
    ceiling = 300.0 if attempts > 20 else min(300.0, 2.0 ** max(0, attempts - 1))
    assert 0.0 <= delay <= ceiling


def test_backoff_spreads_retries() -> None:
    rng = random.Random(7)
    delays = [outbox.backoff_delay(10, 1.0, 300.0, rng) for _ in range(1000)]
    assert max(delays) <= 300.0 and min(delays) >= 0.0
    assert 120 < sum(delays) / len(delays) < 180  # uniform on [0, 300]


def test_parks_at_the_age_limit_and_an_operator_requeues(engine: Engine, settings: Settings) -> None:
    add_peer(engine)
    oid = add_outgoing(engine, "m-1")
    max_age = timedelta(seconds=settings.delivery_max_age_seconds)
    deadline = T0 + max_age

    # A retry is never scheduled past the deadline: the last try happens at it.
    late = deadline - timedelta(seconds=1)
    outbox.claim(engine, "w", late)
    with session_scope(engine) as s:
        assert outbox.mark_failed(s, oid, "timeout", late, settings, rng=random.Random(1)) == "queued"
    assert outbox_row(engine, oid).next_attempt_at <= deadline

    [c] = outbox.claim(engine, "w", deadline)
    with session_scope(engine) as s:
        assert outbox.mark_failed(s, oid, "timeout", deadline, settings) == "parked"
    row = outbox_row(engine, oid)
    assert row.state == "parked" and "timeout" in (row.last_error or "")
    assert message_row(engine, "m-1").status == "parked"
    assert outbox.claim(engine, "w", deadline + timedelta(days=30)) == []

    later = deadline + timedelta(days=1)
    with session_scope(engine) as s:
        assert outbox.requeue(s, oid, later)
    row = outbox_row(engine, oid)
    assert (row.state, row.attempts, row.requeued_at) == ("queued", 0, later)
    [c] = outbox.claim(engine, "w", later)
    assert c.attempts == 1
    with session_scope(engine) as s:  # a fresh age window since the requeue
        assert outbox.mark_failed(s, oid, "again", later + timedelta(hours=1), settings) == "queued"


def test_operator_parks_a_queued_row(engine: Engine) -> None:
    add_peer(engine)
    oid = add_outgoing(engine, "m-1")
    with session_scope(engine) as s:
        assert outbox.park(s, oid, "peer asked us to hold", T0)
        assert not outbox.park(s, oid, "twice", T0)
    assert outbox.claim(engine, "w", T0 + timedelta(days=1)) == []
    assert outbox_row(engine, oid).last_error == "peer asked us to hold"


def test_a_delivered_message_is_never_claimed_or_changed_again(engine: Engine, settings: Settings) -> None:
    add_peer(engine)
    oid = add_outgoing(engine, "m-1")
    [_c] = outbox.claim(engine, "w1", T0, lease_seconds=10)
    t1 = T0 + timedelta(seconds=1)
    with session_scope(engine) as s:
        assert outbox.mark_delivered(
            s, oid, t1, receipt=b"signed receipt", receipt_status="accepted", receipt_verified=True
        )
    msg = message_row(engine, "m-1")
    assert (msg.status, msg.receipt, msg.receipt_verified, msg.delivered_at) == (
        "delivered",
        b"signed receipt",
        True,
        t1,
    )

    for when in (t1, T0 + timedelta(seconds=11), T0 + timedelta(days=365)):
        assert outbox.claim(engine, "w2", when) == []
    with session_scope(engine) as s:
        assert outbox.mark_failed(s, oid, "late failure", t1, settings) is None
        assert not outbox.park(s, oid, "no", t1)
        assert not outbox.requeue(s, oid, t1)
        assert not outbox.mark_delivered(s, oid, t1, receipt=b"another receipt")
        assert not outbox.extend_lease(s, oid, "w1", t1, 60)
    row = outbox_row(engine, oid)
    assert (row.state, row.delivered_at, row.claimed_by) == ("delivered", t1, None)
    assert message_row(engine, "m-1").receipt == b"signed receipt"


def test_delivery_after_a_lost_lease_or_a_park_still_counts(engine: Engine) -> None:
    add_peer(engine)
    a = add_outgoing(engine, "m-a")
    b = add_outgoing(engine, "m-b")
    outbox.claim(engine, "w1", T0, lease_seconds=5)
    outbox.claim(engine, "w2", T0 + timedelta(seconds=5))  # both leases taken over
    with session_scope(engine) as s:
        outbox.park(s, b, "operator", T0 + timedelta(seconds=6))
        assert outbox.mark_delivered(s, a, T0 + timedelta(seconds=7), receipt_status="accepted")
        assert outbox.mark_delivered(s, b, T0 + timedelta(seconds=7), receipt_status="rejected")
    assert outbox_row(engine, a).state == outbox_row(engine, b).state == "delivered"
    assert message_row(engine, "m-a").status == "delivered"
    assert message_row(engine, "m-b").status == "rejected"  # the peer answered with a rejection


def test_claim_orders_by_due_time_and_respects_the_limit(engine: Engine) -> None:
    add_peer(engine)
    ids = [add_outgoing(engine, f"m-{i}", T0 + timedelta(seconds=10 - i)) for i in range(5)]
    first = outbox.claim(engine, "w", T0 + timedelta(seconds=60), limit=2)
    assert [c.outbox_id for c in first] == [ids[4], ids[3]]
    rest = outbox.claim(engine, "w", T0 + timedelta(seconds=60), limit=10)
    assert [c.outbox_id for c in rest] == [ids[2], ids[1], ids[0]]
    assert outbox.claim(engine, "w", T0 + timedelta(seconds=60), limit=0) == []


def test_claim_hands_out_one_message_of_a_thread_at_a_time_in_the_order_sent(engine: Engine) -> None:
    add_peer(engine)
    later = T0 + timedelta(seconds=60)
    t1 = [add_outgoing(engine, f"t1-{i}", T0, thread_id="t1") for i in range(3)]
    t2 = add_outgoing(engine, "t2-0", T0, thread_id="t2")
    loose = [add_outgoing(engine, f"loose-{i}", T0) for i in range(2)]  # outside any thread: never held
    assert {c.outbox_id for c in outbox.claim(engine, "w", later, limit=10)} == {t1[0], t2, *loose}
    assert outbox.claim(engine, "w", later, limit=10) == []  # t1's head is in flight: the rest waits
    with session_scope(engine) as s:
        outbox.mark_delivered(s, t1[0], later)
    assert [c.outbox_id for c in outbox.claim(engine, "w", later, limit=10)] == [t1[1]]
    with session_scope(engine) as s:
        assert outbox.park(s, t1[1], "operator", later)
    assert outbox.claim(engine, "w", later, limit=10) == []  # a parked head holds its thread back
    with session_scope(engine) as s:
        assert outbox.requeue(s, t1[1], later)
    assert [c.outbox_id for c in outbox.claim(engine, "w", later, limit=10)] == [t1[1]]


def test_a_long_held_thread_does_not_hide_other_threads_behind_it(engine: Engine) -> None:
    add_peer(engine)
    held = [add_outgoing(engine, f"held-{i}", T0, thread_id="held") for i in range(150)]
    other = add_outgoing(engine, "other", T0 + timedelta(seconds=1), thread_id="other")
    later = T0 + timedelta(seconds=60)
    with session_scope(engine) as s:
        assert outbox.park(s, held[0], "operator", later)
    assert [c.outbox_id for c in outbox.claim(engine, "w", later, limit=2)] == [other]


def test_a_rolled_back_send_leaves_nothing_to_deliver(engine: Engine) -> None:
    add_peer(engine)
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        blob = write_blob(s, [b"envelope"])
        s.add(
            Message(
                id="m-1",
                direction="out",
                peer="BY",
                envelope_sha256=blob.sha256,
                envelope_size=blob.size,
                blob_id=blob.id,
                created_at=T0,
                status="queued",
            )
        )
        outbox.enqueue_many(s, [("m-1", "BY", T0)])
        raise RuntimeError("crash before commit")
    assert outbox.claim(engine, "w", T0 + timedelta(days=1)) == []


def _claim_concurrently(engine: Engine, workers: int, now: datetime) -> list[list[int]]:
    barrier = threading.Barrier(workers)
    claimed: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            while True:
                got = outbox.claim(engine, f"w{i}", now, limit=7, lease_seconds=3600)
                if not got:
                    return
                claimed[i].extend(c.outbox_id for c in got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return claimed


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_two_replicas_never_claim_the_same_row_postgres(engine: Engine) -> None:
    add_peer(engine)
    total = 300
    with session_scope(engine) as s:
        blob = write_blob(s, [b"envelope"])
        for i in range(total):
            s.add(
                Message(
                    id=f"m-{i}",
                    direction="out",
                    peer="BY",
                    envelope_sha256=blob.sha256,
                    envelope_size=blob.size,
                    blob_id=blob.id,
                    created_at=T0,
                    status="queued",
                )
            )
        s.flush()
        outbox.enqueue_many(s, [(f"m-{i}", "BY", T0) for i in range(total)])

    # A separate engine per replica: separate connection pools, as in two processes.
    other = make_engine(str(engine.url.render_as_string(hide_password=False)))
    try:
        a, b = _claim_concurrently_two_engines(engine, other, T0)
    finally:
        other.dispose()
    assert not set(a) & set(b), "a row was claimed by both replicas"
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert len(a) + len(b) == total
    assert a and b, "both replicas should have got work (SKIP LOCKED, not a global lock)"


def _claim_concurrently_two_engines(e1: Engine, e2: Engine, now: datetime) -> tuple[list[int], list[int]]:
    barrier = threading.Barrier(2)
    out: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str, eng: Engine) -> None:
        try:
            barrier.wait()
            while got := outbox.claim(eng, f"replica-{name}", now, limit=5, lease_seconds=3600):
                out[name].extend(c.outbox_id for c in got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, e)) for n, e in (("a", e1), ("b", e2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return out["a"], out["b"]


def test_concurrent_claimers_share_the_queue_without_overlap(engine: Engine) -> None:
    """Same as above through one engine, on both backends (SQLite serialises the claims)."""
    add_peer(engine)
    for i in range(60):
        add_outgoing(engine, f"m-{i}")
    claimed = _claim_concurrently(engine, 3, T0)
    flat = [i for per in claimed for i in per]
    assert len(flat) == len(set(flat)) == 60


def _terminate_backends(engine: Engine) -> int:
    """Kill every server connection to ``engine``'s database from outside (a restart, an idle timeout)."""
    import psycopg

    url = engine.url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (engine.url.database,),
        ).fetchone()
    return int(killed[0]) if killed else 0


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_pooled_connection_killed_while_idle_is_replaced_before_use_postgres(engine: Engine) -> None:
    import time

    from service.db import PING_IF_IDLE_SECONDS

    add_peer(engine)
    with session_scope(engine, readonly=True) as s:
        assert s.get(Peer, "BY") is not None
    assert _terminate_backends(engine) >= 1
    time.sleep(PING_IF_IDLE_SECONDS + 0.5)
    with session_scope(engine, readonly=True) as s:  # pinged, found dead, replaced: no error
        assert s.get(Peer, "BY") is not None


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_connection_killed_moments_ago_fails_one_transaction_then_the_pool_reconnects_postgres(
    engine: Engine,
) -> None:
    from sqlalchemy.exc import OperationalError

    add_peer(engine)
    with session_scope(engine, readonly=True) as s:
        s.get(Peer, "BY")
    assert _terminate_backends(engine) >= 1
    with pytest.raises(OperationalError) as lost, session_scope(engine, readonly=True) as s:
        s.execute(select(Peer)).all()  # returned moments ago: not pinged, so this one transaction fails
    assert lost.value.connection_invalidated  # the API answers it with 503 database.unavailable
    with session_scope(engine, readonly=True) as s:  # the pool was dropped: a fresh connection
        assert s.get(Peer, "BY") is not None


def test_loop_fetchall_sees_each_commit_and_holds_no_snapshot_between_reads(sqlite_url: str) -> None:
    from sqlalchemy import bindparam

    from service.db import loop_fetchall

    upgrade(sqlite_url)
    eng = make_engine(sqlite_url)
    try:
        by_name = select(User.id, User.disabled).where(  # type: ignore[call-overload]
            User.name == bindparam("name")
        )
        assert loop_fetchall(eng, by_name, {"name": "Clerk"}) == []
        with session_scope(eng) as s:
            s.add(User(name="Clerk", role="clerk", token_hash="h" * 64, disabled=False, created_at=T0))
        rows = loop_fetchall(eng, by_name, {"name": "Clerk"})
        assert len(rows) == 1 and rows[0][1] == 0  # as stored: SQLite keeps a boolean as 0 or 1
        with session_scope(eng) as s:
            s.execute(
                update(User)
                .where(  # type: ignore[arg-type]
                    User.name == "Clerk"
                )
                .values(disabled=True)
            )
        assert loop_fetchall(eng, by_name, {"name": "Clerk"})[0][1] == 1  # the next read sees the commit
        # No read transaction is left open between reads: a full checkpoint can reset the WAL.
        import sqlite3

        other = sqlite3.connect(eng.url.database or "", isolation_level=None)
        try:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            other.close()
        assert busy == 0
    finally:
        eng.dispose()


def test_loop_fetchall_reports_a_driver_error_as_sqlalchemys_and_reconnects(sqlite_url: str) -> None:
    from sqlalchemy import bindparam
    from sqlalchemy.exc import OperationalError

    from service.db import loop_fetchall

    upgrade(sqlite_url)
    eng = make_engine(sqlite_url)
    try:
        by_name = select(User.id).where(User.name == bindparam("name"))  # type: ignore[call-overload]
        assert loop_fetchall(eng, by_name, {"name": "x"}) == []
        missing = select(Meta.key).where(Meta.key == bindparam("key"))  # type: ignore[call-overload]
        with eng.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE meta RENAME TO meta_gone")
        with pytest.raises(OperationalError):  # the API's handler answers 503 database.unavailable
            loop_fetchall(eng, missing, {"key": "k"})
        assert loop_fetchall(eng, by_name, {"name": "x"}) == []  # a fresh connection serves the next read
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_loop_fetchall_async_shares_one_connection_outlives_a_server_restart_and_closes(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import psycopg
    from sqlalchemy import bindparam
    from sqlalchemy.exc import OperationalError

    from service import db
    from service.db import close_loop_connections, loop_fetchall_async

    upgrade(postgres_url)
    eng = make_engine(postgres_url)
    libpq = eng.url.set(drivername="postgresql").render_as_string(hide_password=False)
    by_name = select(User.id, User.disabled).where(  # type: ignore[call-overload]
        User.name == bindparam("name")
    )

    def backends(admin: psycopg.Connection[Any]) -> set[int]:
        mine = "datname = current_database() AND pid <> pg_backend_pid()"
        return {pid for (pid,) in admin.execute(f"SELECT pid FROM pg_stat_activity WHERE {mine}")}

    async def read() -> list[tuple[Any, ...]]:
        return await loop_fetchall_async(eng, by_name, {"name": "Clerk"})

    async def scenario(admin: psycopg.Connection[Any]) -> None:
        before = backends(admin)
        # Many requests at once before there is a connection: one is made, the others wait for it.
        assert await asyncio.gather(*(read() for _ in range(30))) == [[]] * 30
        [pid] = backends(admin) - before
        with session_scope(eng) as s:
            s.add(User(name="Clerk", role="clerk", token_hash="h" * 64, disabled=False, created_at=T0))
        rows = await read()
        assert len(rows) == 1 and rows[0][1] is False  # psycopg gives a bool
        # The server drops it (a restart, an idle timeout): the reads in flight get a new connection.
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert [len(r) for r in await asyncio.gather(*(read() for _ in range(8)))] == [1] * 8
        [reader] = eng.__dict__["_prolink_loop_pg"].values()
        new_pid = reader.conn.info.backend_pid
        assert new_pid != pid and new_pid in backends(admin) and pid not in backends(admin)
        # A read that takes too long is given up (503) and its connection dropped; the next connects again.
        monkeypatch.setattr(db, "LOOP_READ_TIMEOUT_SECONDS", 0.0)
        with pytest.raises(OperationalError):
            await read()
        monkeypatch.setattr(db, "LOOP_READ_TIMEOUT_SECONDS", 10.0)
        assert len(await read()) == 1
        reader_pid = reader.conn.info.backend_pid
        await close_loop_connections(eng)
        assert eng.__dict__["_prolink_loop_pg"] == {}
        await asyncio.sleep(0.2)  # the server ends the backend
        assert reader_pid not in backends(admin)

    try:
        with psycopg.connect(libpq, autocommit=True) as admin:
            asyncio.run(scenario(admin))
    finally:
        eng.dispose()


# --- writes sent together (PostgreSQL's pipeline mode) ---------------------------------------------------


def _meta(engine: Engine) -> dict[str, str]:
    with session_scope(engine, readonly=True) as s:
        return {m.key: m.value for m in s.exec(select(Meta).where(Meta.key.startswith("pipe-")))}  # type: ignore[attr-defined]


def test_pipelined_writes_are_applied_in_order(engine: Engine) -> None:
    with session_scope(engine) as s:
        write_pipelined(
            s.connection(),
            [
                (insert(Meta), [{"key": "pipe-a", "value": "1"}, {"key": "pipe-b", "value": "2"}]),
                (update(Meta).where(Meta.key == "pipe-a").values(value="3"), {}),  # sees the insert before it
            ],
        )
    assert _meta(engine) == {"pipe-a": "3", "pipe-b": "2"}


def test_a_failed_pipelined_write_raises_the_usual_error_and_keeps_nothing(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Meta(key="pipe-a", value="1"))
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        write_pipelined(
            s.connection(),
            [
                (insert(Meta), [{"key": "pipe-c", "value": "3"}]),
                (insert(Meta), [{"key": "pipe-a", "value": "again"}]),  # the key is taken
            ],
        )
    assert _meta(engine) == {"pipe-a": "1"}  # pipe-c went with the rolled-back transaction
    with session_scope(engine) as s:  # and the pooled connection works on
        write_pipelined(s.connection(), [(insert(Meta), [{"key": "pipe-d", "value": "4"}])])
    assert _meta(engine) == {"pipe-a": "1", "pipe-d": "4"}


def test_writes_given_with_audit_entries_run_before_them_in_the_same_transaction(engine: Engine) -> None:
    entry = event_entry(
        T0,
        "message.sealed",
        "ok",
        actor="user:3",
        party="BY",
        object_id="m-1",
        envelope_sha256="ab" * 32,
        kind="request",
    )
    with session_scope(engine) as s:
        record_events(s, [entry], writes_first=[(insert(Meta), [{"key": "pipe-e", "value": "5"}])])
    with session_scope(engine) as s:  # with no entry to record, they are still written
        record_events(s, [], writes_first=[(insert(Meta), [{"key": "pipe-f", "value": "6"}])])
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # a failed one takes the entries with it
        record_events(s, [entry], writes_first=[(insert(Meta), [{"key": "pipe-e", "value": "again"}])])
    assert _meta(engine) == {"pipe-e": "5", "pipe-f": "6"}
    with session_scope(engine, readonly=True) as s:
        assert [
            (e.seq, e.object_id) for e in s.exec(select(Event).where(Event.type == "message.sealed"))
        ] == [(0, "m-1")]


# --- transactions of two round trips (read_together, commit_pipelined) -------------------------------------

_META_VALUE = select(Meta.value).where(Meta.key == bindparam("k"))  # type: ignore[arg-type]
_META_SET = update(Meta).where(Meta.key == bindparam("k")).values(value=bindparam("v")).returning(Meta.value)


def _autocommit_of_pooled(engine: Engine) -> set[bool]:
    """PostgreSQL: the autocommit setting of every connection idle in ``engine``'s pool."""
    held = [engine.raw_connection() for _ in range(engine.pool.checkedin())]  # type: ignore[attr-defined]
    try:
        return {bool(c.driver_connection.autocommit) for c in held}  # type: ignore[union-attr]
    finally:
        for c in held:
            c.close()


def test_reads_run_together_at_the_start_and_the_writes_commit_with_them(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Meta(key="pipe-a", value="1"))
    with session_scope(engine) as s:
        read = read_together(
            s,
            [
                (_META_VALUE, {"k": "pipe-a"}),
                audit.LOCK_READ,
                (_META_SET, {"k": "pipe-a", "v": "2"}),  # a read may write
                (_META_VALUE, {"k": "pipe-none"}),
            ],
        )
        assert read[0] == [("1",)] and read[1][0][0] == 0 and read[2] == [("2",)] and read[3] == []
        commit_pipelined(s, [(insert(Meta), [{"key": "pipe-b", "value": "3"}])])
    assert _meta(engine) == {"pipe-a": "2", "pipe-b": "3"}
    if engine.dialect.name == "postgresql":  # the connection went back to the pool as it came
        assert _autocommit_of_pooled(engine) == {False}


def test_a_failed_commit_in_the_pipeline_keeps_nothing_read_or_written(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Meta(key="pipe-a", value="1"))
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        assert read_together(s, [(_META_SET, {"k": "pipe-a", "v": "2"})]) == [[("2",)]]
        commit_pipelined(
            s,
            [
                (insert(Meta), [{"key": "pipe-c", "value": "3"}]),
                (insert(Meta), [{"key": "pipe-a", "value": "again"}]),
            ],
        )  # the key is taken
    assert _meta(engine) == {"pipe-a": "1"}  # the read's update went with the rest
    with session_scope(engine) as s:  # and the pooled connection works on, in transactions of its own
        read_together(s, [(_META_SET, {"k": "pipe-a", "v": "4"})])
        commit_pipelined(s, [])
    assert _meta(engine) == {"pipe-a": "4"}
    if engine.dialect.name == "postgresql":
        assert _autocommit_of_pooled(engine) == {False}


def test_orm_changes_pending_at_the_pipelined_commit_are_committed_too(engine: Engine) -> None:
    with session_scope(engine) as s:
        read_together(s, [(_META_VALUE, {"k": "pipe-a"})])
        s.add(Meta(key="pipe-o", value="orm"))  # flushed by the session's own commit, after the writes
        commit_pipelined(s, [(insert(Meta), [{"key": "pipe-p", "value": "core"}])])
    assert _meta(engine) == {"pipe-o": "orm", "pipe-p": "core"}


def test_a_failure_between_the_reads_and_the_commit_rolls_back_the_reads(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Meta(key="pipe-a", value="1"))
    with pytest.raises(RuntimeError, match="refused"), session_scope(engine) as s:
        read_together(s, [(_META_SET, {"k": "pipe-a", "v": "2"})])
        raise RuntimeError("refused")
    assert _meta(engine) == {"pipe-a": "1"}
    if engine.dialect.name == "postgresql":
        assert _autocommit_of_pooled(engine) == {False}


@pytest.mark.postgres
def test_nothing_runs_after_a_pipelined_commit_postgres(postgres_url: str) -> None:
    """After ``commit_pipelined`` the transaction is over: a statement then would run outside it (autocommit),
    so it is refused, and nothing of it is stored."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        refused = pytest.raises(RuntimeError, match="after the transaction was committed")
        with refused, session_scope(engine) as s:
            read_together(s, [(_META_VALUE, {"k": "pipe-a"})])
            commit_pipelined(s, [(insert(Meta), [{"key": "pipe-q", "value": "1"}])])
            s.connection().execute(insert(Meta), [{"key": "pipe-r", "value": "2"}])
        with refused, session_scope(engine) as s:  # (writes that go to the driver directly, too)
            read_together(s, [(_META_VALUE, {"k": "pipe-a"})])
            commit_pipelined(s, [(insert(Meta), [{"key": "pipe-t", "value": "1"}])])
            write_pipelined(s.connection(), [(insert(Meta), [{"key": "pipe-u", "value": "2"}])])
        with refused, session_scope(engine) as s:  # (a second pipelined commit, too: a reviewer's find)
            read_together(s, [(_META_VALUE, {"k": "pipe-a"})])
            commit_pipelined(s, [(insert(Meta), [{"key": "pipe-v", "value": "1"}])])
            commit_pipelined(s, [(insert(Meta), [{"key": "pipe-w", "value": "2"}])])
        with refused, session_scope(engine) as s:  # (and reads, which go to the driver directly as well)
            read_together(s, [(_META_VALUE, {"k": "pipe-a"})])
            commit_pipelined(s, [(insert(Meta), [{"key": "pipe-x", "value": "1"}])])
            read_together(s, [(_META_SET, {"k": "pipe-x", "v": "changed after the commit"})])
        assert _meta(engine) == {"pipe-q": "1", "pipe-t": "1", "pipe-v": "1", "pipe-x": "1"}
        with session_scope(engine) as s:  # the next transaction on that connection is a plain one again
            s.connection().execute(insert(Meta), [{"key": "pipe-s", "value": "3"}])
        assert _meta(engine) == {"pipe-q": "1", "pipe-t": "1", "pipe-v": "1", "pipe-x": "1", "pipe-s": "3"}
        assert _autocommit_of_pooled(engine) == {False}
    finally:
        engine.dispose()

"""Writes handed to the driver directly (``service.driver_writes``) store exactly what SQLAlchemy would.

The store transactions' writes skip SQLAlchemy's per-statement machinery
(``db.write_pipelined``, ``db.commit_pipelined``). What these tests pin down, on
SQLite and PostgreSQL: the rows read back are those written through
``Connection.execute``, types converted alike (an aware timestamp in another
zone stored as its UTC instant, a dict in a JSON column, bytes); a statement's
own values are carried; a naive timestamp is refused as SQLAlchemy refuses it,
before anything is written; a duplicate key raises ``IntegrityError`` and keeps
nothing; what cannot be run exactly as SQLAlchemy would is left to it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError

from service import outbox
from service.db import session_scope, write_pipelined
from service.driver_writes import driver_form
from service.models import Blob, Message, Meta, Outbox, Peer
from service.node import _INSERT_MESSAGE

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALMATY = timezone(timedelta(hours=5))
_message = Message.__table__  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def peer_and_blobs(engine: Engine) -> None:
    """What message rows refer to: the peer BY and blobs 0-19."""
    with session_scope(engine) as s:
        s.add(
            Peer(
                party="BY",
                name="BY",
                endpoint="https://by.example:8443",
                fingerprint="ab" * 32,
                bundle=b"bundle",
                bundle_version=1,
                added_at=T0,
            )
        )
        s.flush()
        s.add_all([Blob(id=n, sha256=f"{n:02x}" * 32, size=4096 + n, chunk_count=0) for n in range(20)])


def message_row(n: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": f"m-{n}",
        "direction": "out",
        "peer": "BY",
        "kind": "request",
        "thread_id": f"t-{n}",
        "in_reply_to": None,
        "envelope_sha256": f"{n:02x}" * 32,
        "envelope_size": 4096 + n,
        "blob_id": n,
        "created_at": (T0 + timedelta(seconds=n)).astimezone(ALMATY),
        "status": "queued",
        "receipt": None,
        "receipt_status": None,
        "receipt_verified": False,
        "delivered_at": None,
        "summary": {
            "signed_by_key": "k-1",
            "policy": {"confidentiality": "confidential", "n": n},
            "note": "Запрос о правовой помощи",
        },
    }
    row.update(changes)
    return row


def stored_messages(engine: Engine) -> dict[str, Message]:
    with session_scope(engine, readonly=True) as s:
        return {m.id: m for m in s.exec(select(Message)).scalars()}  # type: ignore[call-overload]


def _as_stored(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": row["created_at"].astimezone(UTC)}


def _columns(m: Message, keys: Any) -> dict[str, Any]:
    return {k: getattr(m, k) for k in keys}


@pytest.mark.parametrize("count", [1, 3, 13])
def test_rows_written_on_the_driver_read_back_as_written_through_sqlalchemy(
    engine: Engine, count: int
) -> None:
    ours = [message_row(n) for n in range(count)]
    theirs = [message_row(n, id=f"sa-{n}") for n in range(count)]
    assert driver_form(engine.dialect, _INSERT_MESSAGE, ours) is not None  # (the driver's path is taken)
    with session_scope(engine) as s:
        write_pipelined(s.connection(), [(_INSERT_MESSAGE, ours if count > 1 else ours[0])])
        s.connection().execute(_INSERT_MESSAGE, theirs)
    stored = stored_messages(engine)
    for mine, sa in zip(ours, theirs, strict=True):
        got, via_sa = _columns(stored[mine["id"]], mine), _columns(stored[sa["id"]], sa)
        assert got == _as_stored(mine)
        assert {**via_sa, "id": mine["id"]} == got
        assert got["created_at"].tzinfo is not None and got["created_at"].utcoffset() == timedelta(0)


def test_a_statements_own_values_are_carried_and_updates_convert_their_parameters(engine: Engine) -> None:
    with session_scope(engine) as s:
        write_pipelined(s.connection(), [(_INSERT_MESSAGE, [message_row(1), message_row(2)])])
        outbox.enqueue_many(s, [("m-1", "BY", T0), ("m-2", "BY", T0)])
    delivered_at = T0.astimezone(ALMATY) + timedelta(minutes=5)
    with session_scope(engine) as s:
        write_pipelined(
            s.connection(),
            [
                (
                    outbox._DELIVER_MESSAGE,
                    [
                        {
                            "m_id": "m-1",
                            "m_status": "delivered",
                            "m_at": delivered_at,
                            "m_receipt": b"\x00receipt-1",
                            "m_receipt_status": "accepted",
                            "m_verified": True,
                        },
                        {
                            "m_id": "m-2",
                            "m_status": "rejected",
                            "m_at": delivered_at,
                            "m_receipt": b"receipt-2\xff",
                            "m_receipt_status": "rejected",
                            "m_verified": True,
                        },
                    ],
                )
            ],
        )
    stored = stored_messages(engine)
    assert (stored["m-1"].status, stored["m-1"].receipt, stored["m-1"].receipt_verified) == (
        "delivered",
        b"\x00receipt-1",
        True,
    )
    assert (stored["m-2"].status, stored["m-2"].receipt) == ("rejected", b"receipt-2\xff")
    assert stored["m-1"].delivered_at == T0 + timedelta(minutes=5)
    with session_scope(engine, readonly=True) as s:
        rows = s.execute(
            select(Outbox.message_id, Outbox.direction, Outbox.state, Outbox.attempts).order_by(  # type: ignore[call-overload]
                Outbox.message_id
            )
        ).all()
    assert [tuple(r) for r in rows] == [("m-1", "out", "queued", 0), ("m-2", "out", "queued", 0)]


def test_a_naive_timestamp_is_refused_as_sqlalchemy_refuses_it_and_nothing_is_written(engine: Engine) -> None:
    naive = message_row(2, created_at=datetime(2026, 11, 26, 12, 0))  # (the point of the test)
    with pytest.raises(StatementError, match="naive datetime") as refused, session_scope(engine) as s:
        write_pipelined(s.connection(), [(_INSERT_MESSAGE, [message_row(1), naive])])
    assert isinstance(refused.value.orig, ValueError)
    assert stored_messages(engine) == {}


def test_a_duplicate_key_raises_integrity_error_and_keeps_nothing_of_the_transaction(engine: Engine) -> None:
    with session_scope(engine) as s:
        write_pipelined(s.connection(), [(_INSERT_MESSAGE, message_row(1))])
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        write_pipelined(
            s.connection(),
            [
                (insert(Meta), {"key": "dup-a", "value": "1"}),
                (_INSERT_MESSAGE, [message_row(2), message_row(1)]),
            ],
        )
    assert set(stored_messages(engine)) == {"m-1"}
    with session_scope(engine, readonly=True) as s:
        assert s.execute(select(Meta.value).where(Meta.key == "dup-a")).all() == []  # type: ignore[arg-type]


def test_what_the_driver_cannot_run_as_sqlalchemy_would_is_left_to_sqlalchemy(engine: Engine) -> None:
    dialect = engine.dialect
    meta = Meta.__table__  # type: ignore[attr-defined]
    assert driver_form(dialect, insert(meta).returning(meta.c.key), [{"key": "a", "value": "1"}]) is None
    other_keys = [{"key": "a", "value": "1"}, {"key": "b"}]
    assert driver_form(dialect, insert(meta), other_keys) is None
    assert driver_form(dialect, insert(meta), []) is None
    in_list = update(meta).where(meta.c.key.in_(bindparam("keys", expanding=True))).values(value="x")
    assert driver_form(dialect, in_list, [{"keys": ["a", "b"]}]) is None
    needs = update(meta).where(meta.c.key == bindparam("k")).values(value=bindparam("v"))
    assert driver_form(dialect, needs, [{"k": "a"}]) is None  # "v" missing: SQLAlchemy raises its own error
    assert driver_form(dialect, select(meta), [{}]) is None  # not a write
    # ...and through write_pipelined they still run (the expanding IN, by SQLAlchemy):
    with session_scope(engine) as s:
        rows = [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
        write_pipelined(s.connection(), [(insert(meta), rows), (in_list, {"keys": ["a", "b"]})])
    with session_scope(engine, readonly=True) as s:
        assert sorted(s.execute(select(meta.c.key, meta.c.value)).all()) == [("a", "x"), ("b", "x")]


def test_a_row_value_named_as_the_statements_own_takes_its_place_as_through_sqlalchemy(
    engine: Engine,
) -> None:
    """SQLAlchemy takes a parameter's value from the row by its key or, failing that, by its compiled name:
    a row's ``value`` replaces ``insert(...).values(value=...)``'s (a reviewer's find)."""
    meta = Meta.__table__  # type: ignore[attr-defined]
    own = insert(meta).values(value="the statement's")
    with session_scope(engine) as s:
        write_pipelined(
            s.connection(),
            [(own, [{"key": "ours-1", "value": "the row's"}, {"key": "ours-2", "value": "the row's"}])],
        )
        s.connection().execute(
            own, [{"key": "sa-1", "value": "the row's"}, {"key": "sa-2", "value": "the row's"}]
        )
        write_pipelined(s.connection(), [(own, {"key": "ours-3"})])
    with session_scope(engine, readonly=True) as s:
        stored = dict(s.execute(select(meta.c.key, meta.c.value)).all())
    assert stored == {
        "ours-1": "the row's",
        "ours-2": "the row's",
        "sa-1": "the row's",
        "sa-2": "the row's",
        "ours-3": "the statement's",
    }

"""PostgreSQL: the locks a store transaction takes when it reads everything first (``Node._read_first``),
and the round trips it and the other reads on a delivery's way take.

Its reads go to the server together at the start (``db.read_together``), the audit log's lock among
them. Two things must still hold: it never deadlocks with an operator's change to a peer (which locks
the peer, then the audit log), and a send that streams its envelope does not keep every other writer
out of the audit log while it does.
"""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from bench.bench_exchange import russian_document
from service.admin import _peer_row, peer_is_active
from service.compose import attachment_ref, compose
from service.db import session_scope
from service.node import Node, record_event
from service.user_api import compose_for
from tests.service.conftest import signatory_of


@pytest.mark.postgres
@pytest.mark.parametrize("node_pair", ["postgres"], indirect=True)
def test_a_send_and_an_operator_change_to_its_peer_never_deadlock_postgres(
    node_pair: tuple[Node, Node],
) -> None:
    """The operator's transaction locks the peer, then appends to the audit log; the send's inserts refer to
    the peer. If the send took the audit lock before its key-share lock on the peer, each would wait for the
    other (PostgreSQL ends that with a deadlock error for one of them)."""
    kz, _ = node_pair
    sealed = kz._seal(
        compose_for(kz, dict(russian_document("BY")), []),
        signatory_of(kz),
        [],
        "user:test",
        kz.peer("BY", active_only=False),
    )
    peer_locked = threading.Event()
    outcome: dict[str, Any] = {}

    def operator() -> None:
        try:
            with session_scope(kz.engine) as s:
                row = _peer_row(s, "BY", lock=True)  # as set_peer_suspended and a bundle update do
                row.name = row.name  # (nothing changes: the lock is what counts)
                peer_locked.set()
                time.sleep(0.5)  # the send is under way meanwhile, as far as it can go
                record_event(s, datetime.now(UTC), "peer.checked", "ok", party="BY", object_id="BY")
            outcome["operator"] = "committed"
        except Exception as exc:
            outcome["operator"] = exc

    def send() -> None:
        peer_locked.wait(5)
        try:
            kz._store_sends([sealed])
            outcome["send"] = "committed"
        except Exception as exc:
            outcome["send"] = exc

    threads = [threading.Thread(target=operator), threading.Thread(target=send)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcome == {"operator": "committed", "send": "committed"}


class _SlowFile(io.BytesIO):
    """An attachment that takes its time to read (a big file being sealed as it is stored)."""

    slow = False

    def read(self, size: int | None = -1) -> bytes:
        if self.slow:
            time.sleep(0.2)
        return super().read(size)


@pytest.mark.postgres
@pytest.mark.parametrize("node_pair", ["postgres"], indirect=True)
def test_a_send_that_streams_its_envelope_leaves_the_audit_log_to_other_writers_postgres(
    node_pair: tuple[Node, Node],
) -> None:
    kz, _ = node_pair
    src = _SlowFile(b"x" * (2 * 1024 * 1024))
    ref = attachment_ref("evidence.bin", "application/octet-stream", src)
    src.slow = True
    doc = compose(
        russian_document("BY"),
        message_id=str(uuid.uuid4()),
        sender_party="KZ",
        now=datetime.now(UTC),
        attachments=[ref],
        answered=None,
    )
    started = time.monotonic()
    sending = threading.Thread(target=lambda: kz.send(doc, signatory_of(kz), [src], actor="user:test"))
    sending.start()
    time.sleep(0.5)  # the send's transaction is under way: its envelope is being sealed and stored
    asked = time.monotonic()
    with session_scope(kz.engine) as s:  # any other writer: a receipt, another send, an operator
        record_event(s, datetime.now(UTC), "probe", "ok")
    waited = time.monotonic() - asked
    sending.join(60)
    took = time.monotonic() - started
    assert took > 1.5 and waited < 0.5, f"the send took {took:.1f} s, the other writer waited {waited:.1f} s"


@pytest.mark.postgres
@pytest.mark.parametrize("node_pair", ["postgres"], indirect=True)
def test_storing_a_send_takes_two_round_trips_postgres(node_pair: tuple[Node, Node], tmp_path: Path) -> None:
    """The reads with the BEGIN, then the writes with the COMMIT: two Syncs from the client, as libpq's own
    trace of the connection shows (each Sync is one wait for the server)."""
    kz, _ = node_pair
    signatory, recipient = signatory_of(kz), kz.peer("BY", active_only=False)

    def sealed() -> Any:
        doc = compose_for(kz, dict(russian_document("BY")), [])
        return kz._seal(doc, signatory, [], "user:test", recipient)

    kz._store_sends([sealed()])  # (warm: peers, statements)
    one = sealed()
    assert _syncs(kz, tmp_path, lambda: kz._store_sends([one])) == ["Sync", "Sync"]


@pytest.mark.postgres
@pytest.mark.parametrize("node_pair", ["postgres"], indirect=True)
def test_asking_whether_a_peer_is_active_takes_one_round_trip_postgres(
    node_pair: tuple[Node, Node], tmp_path: Path
) -> None:
    """Asked before every delivery: one statement, with no BEGIN and ROLLBACK around it."""
    kz, _ = node_pair
    assert _syncs(kz, tmp_path, lambda: peer_is_active(kz, "BY")) == ["Sync"]


def _syncs(node: Node, tmp_path: Path, action: Callable[[], object]) -> list[str]:
    """The Syncs and simple Queries ``node``'s connections send while ``action`` runs (each is one wait for
    the server), read from libpq's own trace of every connection checked out meanwhile."""
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as out:

        def traced(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            dbapi_connection.pgconn.trace(out.fileno())

        def untraced(dbapi_connection: Any, _record: Any) -> None:
            if dbapi_connection is not None:
                dbapi_connection.pgconn.untrace()

        event.listen(node.engine, "checkout", traced)
        event.listen(node.engine, "checkin", untraced)
        try:
            action()
        finally:
            event.remove(node.engine, "checkout", traced)
            event.remove(node.engine, "checkin", untraced)
    return re.findall(r"^\S+ \S+\tF\t\d+\t(Sync|Query)\b", trace.read_text(), flags=re.MULTILINE)

"""The delivery outbox: which outgoing message goes to which peer, and when.

A message is enqueued in the same transaction that created it. Delivery
workers ``claim`` due rows with a lease (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, so several replicas share one queue; SQLite: one ``BEGIN IMMEDIATE``
transaction, so claims are serialised), deliver, then ``mark_delivered`` or
``mark_failed``. A failed row waits an exponentially growing, fully jittered
delay and is parked for an operator once it is older than the delivery age
limit. A worker that dies leaves its rows ``in_flight``; they are claimed again
when the lease runs out.

Invariants: a ``delivered`` row never changes again and is never claimed; a
worker whose lease was taken over cannot push a row back into the queue.

Time is always passed in (``now``, aware UTC); this module never reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, any_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from service.db import read_only, session_scope, write_or_defer
from service.models import Message, Outbox, Peer
from service.settings import Settings

MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery a worker now holds a lease on."""

    outbox_id: int
    message_id: str
    peer: str
    attempts: int  # including this one
    blob_id: int
    envelope_sha256: str
    envelope_size: int
    worker_id: str
    lease_expires_at: datetime
    created_at: datetime | None = None  # when the message was sealed (for the latency metric)
    #: The envelope's bytes, when the send path handed them over in memory (``enqueue_leased``): the
    #: worker sends them without reading the blob back.
    envelope: bytes | None = field(default=None, repr=False)


def enqueue_many(
    session: Session, rows: Sequence[tuple[str, str, datetime]], *, defer: list[tuple[Any, Any]] | None = None
) -> None:
    """Queue stored outgoing messages, (message id, peer, now) each, for delivery to that peer, due at once:
    one insert for all of them.

    The messages are stored as ``queued`` by the caller (a message is created
    queued). Flushes first, so messages added to ``session`` are stored before
    their outbox rows refer to them. With ``defer``, the insert is appended to it
    instead (no flush), for a caller that runs it after its own insert of the
    messages (``db.write_or_defer``).
    """
    if not rows:
        return
    if defer is None:
        session.flush()
    write_or_defer(
        session.connection(),
        [
            (
                _INSERT_OUTBOX,
                [
                    {"message_id": message_id, "peer": peer, "next_attempt_at": now, "created_at": now}
                    for message_id, peer, now in rows
                ],
            )
        ],
        defer,
    )


# No RETURNING (SQLAlchemy asks back the key of a one-row insert): may be pipelined.
_INSERT_OUTBOX = insert(Outbox).values(direction="out", state="queued", attempts=0).inline()
_LEASED = insert(Outbox).values(direction="out", state="in_flight", attempts=1)
_INSERT_LEASED = _LEASED.returning(col(Outbox.id), col(Outbox.message_id))
_INSERT_LEASED_WITH_IDS = _LEASED.inline()  # ids given (``db.new_ids``): may be pipelined


def enqueue_leased(
    session: Session,
    rows: Sequence[tuple[str, str, datetime]],
    worker_id: str,
    lease_until: datetime,
    *,
    ids: Sequence[int] | None = None,
    defer: list[tuple[Any, Any]] | None = None,
) -> dict[str, int]:
    """Queue stored outgoing messages, (message id, peer, now) each, already claimed by ``worker_id`` until
    ``lease_until``: their first attempt is under way. Returns the outbox id of each message.

    For the send path, which hands the sealed envelopes to this process's worker
    in memory once the transaction commits (``DeliveryWorker.hand_over``): no
    claim and no read of the envelopes follows. If that worker dies first, or
    never sends them (``give_back``), the rows are claimed like any other whose
    lease ran out. The messages must be stored ``in_flight`` by the caller, as
    ``claim`` leaves a claimed message. ``ids``: one new outbox id per row, drawn
    by the caller (``db.new_ids``): then the insert needs no answer, and with
    ``defer`` it is appended to it for the caller to run with its other writes.
    """
    if not rows:
        return {}
    values = [
        {
            "message_id": message_id,
            "peer": peer,
            "next_attempt_at": now,
            "created_at": now,
            "claimed_by": worker_id,
            "claim_expires_at": lease_until,
        }
        for message_id, peer, now in rows
    ]
    if ids is None:
        return {r.message_id: r.id for r in session.connection().execute(_INSERT_LEASED, values)}
    write_or_defer(
        session.connection(),
        [
            (
                _INSERT_LEASED_WITH_IDS,
                [{**v, "id": outbox_id} for v, outbox_id in zip(values, ids, strict=True)],
            )
        ],
        defer,
    )
    return {v["message_id"]: outbox_id for v, outbox_id in zip(values, ids, strict=True)}


#: Peers whose rows are held (suspended): never claimed, and not "due" for the claim's first read either.
_HELD_PEERS = select(col(Peer.party)).where(col(Peer.status) != "active")


def _due(now: datetime) -> Any:
    return or_(
        and_(col(Outbox.state) == "queued", col(Outbox.next_attempt_at) <= now),
        and_(col(Outbox.state) == "in_flight", col(Outbox.claim_expires_at) <= now),
    )


def _claim_statements() -> tuple[Any, Any, Any, Any, Any]:
    """The statements of a claim, built once (building them costs more than running them)."""
    joined = and_(col(Message.id) == col(Outbox.message_id), col(Message.direction) == col(Outbox.direction))
    candidates = (
        select(col(Outbox.id), col(Outbox.peer), col(Message.thread_id))
        .join(Message, joined)
        .where(_due(bindparam("now")))
        # A suspended peer's messages are held: never claimed, so no attempt is spent on them.
        .where(col(Outbox.peer).not_in(_HELD_PEERS))
        # Peers the claiming worker is busy with (``claim_due``'s ``busy_peers``) are left for later.
        .where(col(Outbox.peer).not_in(bindparam("busy", expanding=True)))
        .order_by(col(Outbox.next_attempt_at), col(Outbox.id))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .with_for_update(skip_locked=True, of=Outbox)
    )
    # Per (thread, peer) among the given threads: the oldest outgoing row not yet delivered. Found through the
    # thread index, so its cost follows the size of those threads, not the outbox's history.
    heads = (
        select(col(Message.thread_id), col(Outbox.peer), func.min(col(Outbox.id)).label("head"))
        .join(Message, joined)
        # (Only outgoing messages have outbox rows; no "direction = 'out'" here, or SQLite walks that index.)
        .where(
            col(Message.thread_id).in_(bindparam("threads", expanding=True)), col(Outbox.state) != "delivered"
        )
        .group_by(col(Message.thread_id), col(Outbox.peer))
    )
    ids = bindparam("ids", expanding=True)
    take = (
        update(Outbox)
        .where(col(Outbox.id).in_(ids), _due(bindparam("now")))
        .values(
            state="in_flight",
            claimed_by=bindparam("worker_id"),
            claim_expires_at=bindparam("lease_until"),
            attempts=col(Outbox.attempts) + 1,
        )
        # The rows this statement took, and what the claim needs of them: no second read.
        .returning(col(Outbox.id), col(Outbox.message_id), col(Outbox.peer), col(Outbox.attempts))
    )
    in_flight = (
        update(Message)
        .where(col(Message.id).in_(bindparam("message_ids", expanding=True)), col(Message.direction) == "out")
        .values(status="in_flight")
        .returning(
            col(Message.id),
            col(Message.blob_id),
            col(Message.envelope_sha256),
            col(Message.envelope_size),
            col(Message.created_at),
        )
    )
    return candidates, heads, take, in_flight


_CANDIDATES, _THREAD_HEADS, _TAKE, _SET_IN_FLIGHT = _claim_statements()
#: Due rows looked at per claim, at most: a long thread held back by its parked head cannot hide the
#: rows behind it for ever, and one claim does not read the whole queue either.
CLAIM_SCAN_LIMIT = 4096


def _deliverable(conn: Connection, now: datetime, limit: int, busy: list[str]) -> tuple[list[int], bool]:
    """Up to ``limit`` due outbox ids, oldest first, each the oldest undelivered row of its thread and peer;
    and whether due rows were passed over because an earlier row of their thread is not delivered yet.

    Messages of one thread are delivered in the order they were sent: the peer
    applies them to the same lifecycle, where a result overtaking its acceptance
    would be refused. A parked (or waiting) message therefore holds back the
    rest of its thread until it is delivered or an operator requeues it; other
    threads are not held. Messages outside any thread are never held.
    """
    chosen: list[int] = []
    held = False
    page = max(4 * limit, 64)
    offset = 0
    while len(chosen) < limit and offset < CLAIM_SCAN_LIMIT:
        rows = conn.execute(_CANDIDATES, {"now": now, "limit": page, "offset": offset, "busy": busy}).all()
        threads = sorted({r.thread_id for r in rows if r.thread_id is not None})
        heads = (
            {(h.thread_id, h.peer): h.head for h in conn.execute(_THREAD_HEADS, {"threads": threads})}
            if threads
            else {}
        )
        free = [r.id for r in rows if r.thread_id is None or heads.get((r.thread_id, r.peer)) == r.id]
        held = held or len(free) < len(rows)
        chosen.extend(free)
        if len(rows) < page:
            break
        offset += page
    return chosen[:limit], held


# Whether a claim could take anything (read without the write lock): held rows and a busy peer's do not
# count, or every wake while a peer is suspended would take the write lock for nothing.
_ANY_DUE = (
    select(col(Outbox.id))
    .where(_due(bindparam("now")))
    .where(col(Outbox.peer).not_in(_HELD_PEERS))
    .where(col(Outbox.peer).not_in(bindparam("busy", expanding=True)))
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claims: list[Claim]
    #: Due rows were left because an earlier message of their thread is still undelivered (or there
    #: were more than ``limit``): claim again once a delivery ends.
    more: bool


def claim(
    engine: Engine,
    worker_id: str,
    now: datetime,
    limit: int = 10,
    lease_seconds: float = 120.0,
) -> list[Claim]:
    """Take up to ``limit`` due deliveries for ``worker_id`` (its own transaction).

    Due means queued with ``next_attempt_at <= now``, or in flight with an
    expired lease (the worker holding it died or hung). Rows another
    transaction has locked are skipped, not waited for.
    """
    return claim_due(engine, worker_id, now, limit, lease_seconds).claims


def claim_due(
    engine: Engine,
    worker_id: str,
    now: datetime,
    limit: int = 10,
    lease_seconds: float = 120.0,
    busy_peers: Sequence[str] = (),
) -> ClaimResult:
    """``claim``, also telling whether due rows were left behind.

    Rows for ``busy_peers`` are not claimed (nor counted as left behind): the
    worker already has deliveries to them in flight and takes their rows when
    one of those ends.
    """
    if limit <= 0:
        return ClaimResult([], False)
    busy = list(busy_peers)
    if engine.dialect.name == "sqlite":
        # Nothing due (the common case): a deferred read, so the claim's write lock is not taken for
        # nothing. PostgreSQL's claim locks only the rows it finds, so there it would be a round trip
        # more on every claim that finds some.
        with read_only(engine).connect() as conn, conn.begin():
            if conn.execute(_ANY_DUE, {"now": now, "busy": busy}).first() is None:
                return ClaimResult([], False)
    lease_until = now + timedelta(seconds=lease_seconds)
    with session_scope(engine) as session:
        conn = session.connection()
        ids, held = _deliverable(conn, now, limit, busy)
        if not ids:
            return ClaimResult([], held)
        taken = {
            r.id: r
            for r in conn.execute(
                _TAKE, {"ids": ids, "now": now, "worker_id": worker_id, "lease_until": lease_until}
            )
        }
        rows = [taken[i] for i in ids if i in taken]  # in the order chosen: oldest due first
        messages = {
            m.id: m for m in conn.execute(_SET_IN_FLIGHT, {"message_ids": [r.message_id for r in rows]})
        }
        claims = [
            Claim(
                outbox_id=r.id,
                message_id=r.message_id,
                peer=r.peer,
                attempts=r.attempts,
                blob_id=m.blob_id,
                envelope_sha256=m.envelope_sha256,
                envelope_size=m.envelope_size,
                worker_id=worker_id,
                lease_expires_at=lease_until,
                created_at=m.created_at,
            )
            for r in rows
            if (m := messages.get(r.message_id)) is not None
        ]
        return ClaimResult(claims, held or len(ids) >= limit)


def give_back(session: Session, claims: Sequence[Claim]) -> list[str]:
    """Put claims that were never sent back in the queue, due as before, the attempt given back (it never
    happened): a claim for a peer suspended since it was claimed (``admin.hold_if_suspended``), or what the
    worker was handed and will not send (``DeliveryWorker``). Only a row still held under that very claim
    goes back: one whose lease ran out and that was claimed again since, by another worker or by the same
    one (a later attempt), is left alone, and so is its message. Returns the message ids put back."""
    conn = session.connection()
    back = [
        r.message_id
        for c in claims
        for r in conn.execute(
            _GIVE_BACK, {"o_id": c.outbox_id, "o_worker": c.worker_id, "o_attempts": c.attempts}
        )
    ]
    if back:
        conn.execute(_UNCLAIM_MESSAGES, {"message_ids": back})
    return back


_GIVE_BACK = (
    update(Outbox)
    .where(
        col(Outbox.id) == bindparam("o_id"),
        col(Outbox.state) == "in_flight",
        col(Outbox.claimed_by) == bindparam("o_worker"),
        col(Outbox.attempts) == bindparam("o_attempts"),
    )
    .values(state="queued", claimed_by=None, claim_expires_at=None, attempts=col(Outbox.attempts) - 1)
    .returning(col(Outbox.message_id))
)
_UNCLAIM_MESSAGES = (
    update(Message)
    .where(
        col(Message.id).in_(bindparam("message_ids", expanding=True)),
        col(Message.direction) == "out",
        col(Message.status) == "in_flight",
    )
    .values(status="queued")
)


def extend_lease(
    session: Session, outbox_id: int, worker_id: str, now: datetime, lease_seconds: float
) -> bool:
    """Keep a long delivery (a big envelope) from being claimed by another worker.

    False if the row is no longer this worker's (lease lost, parked, delivered).
    """
    result = session.execute(
        update(Outbox)
        .where(
            col(Outbox.id) == outbox_id, col(Outbox.state) == "in_flight", col(Outbox.claimed_by) == worker_id
        )
        .values(claim_expires_at=now + timedelta(seconds=lease_seconds))
    )
    return bool(cast("CursorResult[Any]", result).rowcount)


@dataclass(frozen=True, slots=True)
class Receipted:
    """A delivery the peer answered with a verified receipt."""

    outbox_id: int
    receipt: bytes | None
    receipt_status: str | None
    receipt_verified: bool = False


def mark_delivered(
    session: Session,
    outbox_id: int,
    now: datetime,
    *,
    receipt: bytes | None = None,
    receipt_status: str | None = None,
    receipt_verified: bool = False,
) -> bool:
    """Record that the peer answered with a receipt. Final: the row is never claimed again.

    Applies whatever state the row is in (a delivery that succeeded after an
    operator parked it, or after its lease was taken over, still happened).
    A receipt whose status is ``rejected`` marks the message ``rejected``; the
    outbox row is still ``delivered`` (the peer has the bytes; retrying would
    not change its answer). Returns False if the row was already delivered,
    in which case nothing is changed (the first receipt is kept).
    """
    receipted = Receipted(outbox_id, receipt, receipt_status, receipt_verified)
    done = mark_delivered_many(session, [receipted], now)
    return outbox_id in done


def _deliver_outbox(chosen: Any) -> Any:
    """Deliver the ``chosen`` outbox rows not delivered yet, returning those it delivered (none twice)."""
    return (
        update(Outbox)
        .where(chosen, col(Outbox.state) != "delivered")
        .values(state="delivered", delivered_at=bindparam("now"), claimed_by=None, claim_expires_at=None)
        .returning(col(Outbox.id), col(Outbox.message_id))
    )


_DELIVER_OUTBOX = _deliver_outbox(col(Outbox.id).in_(bindparam("ids", expanding=True)))
# The same for ``db.read_together`` on PostgreSQL, whose parameters cannot expand: the ids as one array.
_DELIVER_OUTBOX_ANY = _deliver_outbox(col(Outbox.id) == any_(bindparam("ids")))
_DELIVER_MESSAGE = (
    update(Message.__table__)  # type: ignore[attr-defined]
    .where(Message.__table__.c.id == bindparam("m_id"), Message.__table__.c.direction == "out")  # type: ignore[attr-defined]
    .values(
        status=bindparam("m_status"),
        delivered_at=bindparam("m_at"),
        receipt=bindparam("m_receipt"),
        receipt_status=bindparam("m_receipt_status"),
        receipt_verified=bindparam("m_verified"),
    )
)


def delivery_read(items: list[Receipted], now: datetime, *, postgresql: bool) -> tuple[Any, dict[str, Any]]:
    """``mark_delivered_many``'s first statement (it delivers the outbox rows and returns those it delivered),
    for a caller that runs it with its own reads at the start of its transaction (``db.read_together``); its
    rows go back to ``mark_delivered_many`` as ``delivered``."""
    statement = _DELIVER_OUTBOX_ANY if postgresql else _DELIVER_OUTBOX
    return statement, {"ids": [i.outbox_id for i in items], "now": now}


def mark_delivered_many(
    session: Session,
    items: list[Receipted],
    now: datetime,
    *,
    defer: list[tuple[Any, Any]] | None = None,
    delivered: Sequence[Sequence[Any]] | None = None,
) -> set[int]:
    """``mark_delivered`` for several rows in two statements; returns the outbox ids newly delivered.

    The outbox rows are delivered first: the UPDATE locks them, so a concurrent
    settlement of the same rows waits and then finds them delivered, and only
    the messages of rows this one delivered get their receipt. With ``defer``, the
    update of the messages is appended to it for the caller to run (``db.write_pipelined``).
    ``delivered``: the rows of ``delivery_read``'s statement, run by the caller in this transaction.
    """
    if not items:
        return set()
    conn = session.connection()
    if delivered is None:
        session.flush()
        delivered = conn.execute(_DELIVER_OUTBOX, {"ids": [i.outbox_id for i in items], "now": now}).all()
    open_rows = {row[0]: row[1] for row in delivered}
    first: dict[int, Receipted] = {}  # one row twice (deliveries of two claims, one group): the first counts
    for i in items:
        if i.outbox_id in open_rows:
            first.setdefault(i.outbox_id, i)
    todo = list(first.values())
    if not todo:
        return set()
    messages = [
        {
            "m_id": open_rows[i.outbox_id],
            "m_at": now,
            "m_receipt": i.receipt,
            "m_receipt_status": i.receipt_status,
            "m_verified": i.receipt_verified,
            "m_status": "rejected" if i.receipt_status == "rejected" else "delivered",
        }
        for i in todo
    ]
    write_or_defer(conn, [(_DELIVER_MESSAGE, messages)], defer)
    return set(open_rows)


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: full jitter.

    Uniform in [0, min(cap, base * 2 ** (attempts - 1))] ("Exponential Backoff
    And Jitter", AWS Architecture Blog): retries of many messages to a peer
    that was down spread out instead of arriving together.
    """
    exponent = max(0, min(attempts - 1, 62))
    ceiling = min(cap, base * (2.0**exponent))
    return (rng or random).uniform(0.0, ceiling)


def mark_failed(
    session: Session,
    outbox_id: int,
    error: str,
    now: datetime,
    settings: Settings,
    *,
    worker_id: str | None = None,
    rng: random.Random | None = None,
) -> str | None:
    """Record a failed attempt; schedule the next one or park the row.

    The row is parked once its age (since enqueue, or since an operator's
    ``requeue``) reaches ``settings.delivery_max_age_seconds``; the next
    attempt is never scheduled past that deadline, so the last try happens at
    it. With ``worker_id``, applies only if that worker still holds the row.
    Returns the new state (``queued`` or ``parked``), or None if nothing changed.
    """
    row = _lock(session, outbox_id)
    if row is None or row.state != "in_flight":
        return None
    if worker_id is not None and row.claimed_by != worker_id:
        return None
    error = error[:MAX_ERROR_LENGTH]
    window_start = row.requeued_at or row.created_at
    deadline = window_start + timedelta(seconds=settings.delivery_max_age_seconds)
    if now >= deadline:
        _set_parked(session, row, f"gave up after {row.attempts} attempts: {error}"[:MAX_ERROR_LENGTH])
        return "parked"
    delay = backoff_delay(
        row.attempts,
        settings.delivery_backoff_base_seconds,
        settings.delivery_backoff_max_seconds,
        rng,
    )
    next_at = min(now + timedelta(seconds=delay), deadline)
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == outbox_id, col(Outbox.state) == "in_flight")
        .values(
            state="queued",
            next_attempt_at=next_at,
            last_error=error,
            claimed_by=None,
            claim_expires_at=None,
        )
    )
    _set_message_status(session, row.message_id, "queued")
    return "queued"


def park(session: Session, outbox_id: int, reason: str, now: datetime) -> bool:
    """Stop retrying a queued or in-flight row until an operator requeues it."""
    row = _lock(session, outbox_id)
    if row is None or row.state not in ("queued", "in_flight"):
        return False
    _set_parked(session, row, reason[:MAX_ERROR_LENGTH])
    return True


def requeue(session: Session, outbox_id: int, now: datetime) -> bool:
    """Operator's retry: a parked (or waiting) row becomes due now, with a fresh age window.

    Delivered and in-flight rows are left alone (False).
    """
    row = _lock(session, outbox_id)
    if row is None or row.state not in ("parked", "queued"):
        return False
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == outbox_id, col(Outbox.state).in_(("parked", "queued")))
        .values(
            state="queued",
            next_attempt_at=now,
            requeued_at=now,
            attempts=0,
            claimed_by=None,
            claim_expires_at=None,
        )
    )
    _set_message_status(session, row.message_id, "queued")
    return True


# -- helpers --------------------------------------------------------------------


def _lock(session: Session, outbox_id: int) -> Any:
    """The row's current values, locked until the end of the transaction (PostgreSQL)."""
    session.flush()
    return (
        session.connection()
        .execute(select(Outbox.__table__).where(col(Outbox.id) == outbox_id).with_for_update())  # type: ignore[attr-defined]
        .one_or_none()
    )


def _set_parked(session: Session, row: Any, reason: str) -> None:
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row.id, col(Outbox.state) != "delivered")
        .values(state="parked", last_error=reason, claimed_by=None, claim_expires_at=None)
    )
    _set_message_status(session, row.message_id, "parked")


def _set_message_status(session: Session, message_id: str, status: str) -> None:
    session.execute(
        update(Message)
        .where(col(Message.id) == message_id, col(Message.direction) == "out")
        .values(status=status)
    )

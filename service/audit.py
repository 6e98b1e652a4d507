"""The audit log: append-only, one Merkle leaf per event, signed tree heads, proofs at any size.

Every ``Event`` row is an entry. ``append_rows`` (what ``service.node.record_events``
calls, inside the transaction that made the state change the entries record)
locks the log's state row (``SELECT ... FOR UPDATE`` on
PostgreSQL, so replicas queue; SQLite transactions are already serialised by
``BEGIN IMMEDIATE``), gives each Event the next ``seq``, its canonical bytes
(``protocol.entry_bytes``, the leaf) and leaf hash, extends the tree's compact
range and writes the perfect subtrees the new leaves complete into
``audit_node``. That is O(log n) hashing and amortised two rows per entry, and
the lock is held from the append to the commit (callers record events last, or,
in the node's store transactions, lock the state with their first reads and
write everything right after: ``LOCK_READ``): sequence numbers are dense and
follow commit order. ``Event`` objects added to
an ORM session directly are appended the same way when it flushes
(``append_pending``). A transaction that rolls back takes its entries and
the state change with it.

Because every perfect subtree is stored, the root at any size and any
inclusion or consistency proof is O(log n) row reads (``root_at``,
``inclusion``, ``consistency``).

``sign_head`` signs a C2SP checkpoint of the current tree with the node key
when the log grew since the last head; ``service.audit_heads`` does that on a
timer and has peers cosign it. Never store or log message content here: entries
carry ids, hashes, codes, purposes and outcomes (``protocol.check_detail``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.inspection import inspect
from sqlalchemy.orm import Session

import protocol
from protocol import CompactRange, LogError, NodeGetter, SigningKey
from service.db import write_pipelined
from service.models import AuditCosignature, AuditHead, AuditNode, AuditState, Event

STATE_ID = 1
HASH = 32
#: Perfect subtrees fetched per query when a proof or root needs them.
FETCH_CHUNK = 500

_event = Event.__table__  # type: ignore[attr-defined]
_node = AuditNode.__table__  # type: ignore[attr-defined]
_state = AuditState.__table__  # type: ignore[attr-defined]
_head = AuditHead.__table__  # type: ignore[attr-defined]
_cosig = AuditCosignature.__table__  # type: ignore[attr-defined]


def pack(cr: CompactRange) -> bytes:
    return b"".join(cr.hashes)


def unpack(size: int, frontier: bytes) -> CompactRange:
    return CompactRange(size, [frontier[i : i + HASH] for i in range(0, len(frontier), HASH)])


# --- appending ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An event to append, as the caller describes it (``at`` aware UTC)."""

    at: datetime
    actor: str
    party: str | None
    type: str
    object_id: str | None
    outcome: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    entry: bytes
    leaf_hash: bytes


# Built once: appends run in every write transaction that records an event.
_LOCK_STATE = select(_state.c.size, _state.c.frontier).where(_state.c.id == STATE_ID).with_for_update()
_SAVE_STATE = (
    update(_state)
    .where(_state.c.id == STATE_ID)
    .values(size=bindparam("new_size"), frontier=bindparam("new_frontier"))
)
_INSERT_NODES = insert(_node).inline()  # no RETURNING (implicit for one row): pipelined on PostgreSQL
_INSERT_EVENTS = insert(_event).inline()


def _lock_state(conn: Connection, read: Sequence[Sequence[Any]] | None = None) -> CompactRange:
    """The log's state, locked until the commit; ``read``: ``LOCK_READ``'s rows, read by the caller in this
    transaction (else read here)."""
    rows = conn.execute(_LOCK_STATE).all() if read is None else read
    if not rows:
        raise RuntimeError("the audit log has no state row: run the database migrations")
    size, frontier = rows[0]
    return unpack(size, bytes(frontier))


#: The read that locks the log's state, for a caller that reads it with its own reads at the start of its
#: transaction (``db.read_together``), its rows passed back as ``append_rows``'s ``locked``.
LOCK_READ: tuple[Any, dict[str, Any]] = (_LOCK_STATE, {})


def append(conn: Connection, entries: Sequence[NewEntry]) -> list[Appended]:
    """Append ``entries`` in order, inside the caller's transaction; returns their seq, bytes and leaf hash.

    Writes the tree (nodes and state); the caller stores the entries themselves
    (``append_pending`` lets the ORM insert the Event rows, ``append_rows``
    inserts them too).
    """
    if not entries:
        return []
    out, tree = _extend(_lock_state(conn), entries)
    write_pipelined(conn, tree)
    return out


def _extend(cr: CompactRange, entries: Sequence[NewEntry]) -> tuple[list[Appended], list[tuple[Any, Any]]]:
    """Add ``entries`` to ``cr`` (in place): each one's seq, bytes and leaf, and the writes that store the
    tree (the nodes they complete, the new state)."""
    out: list[Appended] = []
    nodes: list[dict[str, Any]] = []
    for e in entries:
        seq = cr.size
        data = protocol.entry_bytes(
            seq=seq,
            at=e.at,
            actor=e.actor,
            party=e.party,
            type=e.type,
            object_id=e.object_id,
            outcome=e.outcome,
            detail=e.detail,
        )
        leaf = protocol.leaf_hash(data)
        nodes.extend({"level": lvl, "idx": idx, "hash": h} for lvl, idx, h in cr.append(leaf))
        out.append(Appended(seq, data, leaf))
    tree: list[tuple[Any, Any]] = [(_INSERT_NODES, nodes)] if nodes else []
    tree.append((_SAVE_STATE, {"new_size": cr.size, "new_frontier": pack(cr)}))
    return out, tree


def append_rows(
    conn: Connection, entries: Sequence[NewEntry], writes_first: Sequence[tuple[Any, Any]] = ()
) -> list[Appended]:
    """Append ``entries`` and insert their Event rows, with Core, in the caller's transaction.

    The writes that follow the lock (nodes, state, events) go to the server
    together (``write_pipelined``; on PostgreSQL one round trip instead of three).
    ``writes_first``: the caller's own writes (statement, parameters; no result
    read), run before them in the same pipeline.
    """
    done, writes = append_writes(conn, entries, writes_first)
    write_pipelined(conn, writes)
    return done


def append_writes(
    conn: Connection,
    entries: Sequence[NewEntry],
    writes_first: Sequence[tuple[Any, Any]] = (),
    *,
    locked: Sequence[Sequence[Any]] | None = None,
) -> tuple[list[Appended], list[tuple[Any, Any]]]:
    """``append_rows``, but the writes (``writes_first``, then the tree's and the entries') are returned for
    the caller to run, not run. ``locked``: ``LOCK_READ``'s rows, if the caller read them."""
    if not entries:
        return [], list(writes_first)
    done, tree = _extend(_lock_state(conn, locked), entries)
    return done, [*writes_first, *tree, (_INSERT_EVENTS, _event_rows(entries, done))]


def _event_rows(entries: Sequence[NewEntry], done: Sequence[Appended]) -> list[dict[str, Any]]:
    return [
        {
            "at": e.at,
            "actor": e.actor,
            "party": e.party,
            "type": e.type,
            "object_id": e.object_id,
            "outcome": e.outcome,
            "detail": e.detail,
            "seq": a.seq,
            "entry": a.entry,
            "leaf_hash": a.leaf_hash,
        }
        for e, a in zip(entries, done, strict=True)
    ]


def append_pending(session: Session) -> None:
    """Flush hook: give the session's new Events their seq, entry bytes and leaf hash, in insertion order."""
    pending = [obj for obj in session.new if isinstance(obj, Event) and obj.seq is None]
    if not pending:
        return
    pending.sort(key=lambda obj: inspect(obj).insert_order)
    entries = [
        NewEntry(e.at, e.actor, e.party, e.type, e.object_id, e.outcome, dict(e.detail or {}))
        for e in pending
    ]
    for event, done in zip(pending, append(session.connection(), entries), strict=True):
        event.seq, event.entry, event.leaf_hash = done.seq, done.entry, done.leaf_hash


# --- reading the tree ---------------------------------------------------------------------


def size(conn: Connection) -> int:
    return int(conn.execute(select(_state.c.size).where(_state.c.id == STATE_ID)).scalar_one())


def current(conn: Connection) -> CompactRange:
    """The compact range of the whole log as committed (no lock)."""
    row = conn.execute(select(_state.c.size, _state.c.frontier).where(_state.c.id == STATE_ID)).one()
    return unpack(row.size, row.frontier)


def fetch_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Hashes of the perfect subtrees ``keys`` ((level, index); level 0 is a leaf hash)."""
    wanted = sorted(set(keys))
    found: dict[tuple[int, int], bytes] = {}
    leaves = [i for lvl, i in wanted if lvl == 0]
    inner = [(lvl, i) for lvl, i in wanted if lvl > 0]
    for start in range(0, len(leaves), FETCH_CHUNK):
        chunk = leaves[start : start + FETCH_CHUNK]
        for seq, h in conn.execute(select(_event.c.seq, _event.c.leaf_hash).where(_event.c.seq.in_(chunk))):
            found[(0, int(seq))] = bytes(h)
    by_level: dict[int, list[int]] = {}
    for lvl, i in inner:
        by_level.setdefault(lvl, []).append(i)
    if by_level:  # (level = l AND idx IN (...)) OR ...: uses the key on both backends (row-value IN does not)
        where = or_(
            *(and_(_node.c.level == lvl, _node.c.idx.in_(indexes)) for lvl, indexes in by_level.items())
        )
        for lvl, idx, h in conn.execute(select(_node.c.level, _node.c.idx, _node.c.hash).where(where)):
            found[(int(lvl), int(idx))] = bytes(h)
    missing = [k for k in wanted if k not in found]
    if missing:
        raise LogError(
            f"the audit tree is missing stored nodes {missing[:5]}: the log was tampered with",
            code="audit.tree_damaged",
        )
    return found


def _with_nodes(conn: Connection, compute: Callable[[NodeGetter], Any]) -> Any:
    nodes = fetch_nodes(conn, protocol.needed_nodes(compute))
    return compute(lambda level, index: nodes[(level, index)])


def _check_size(conn: Connection, *sizes: int) -> None:
    have = size(conn)
    for s in sizes:
        if not 0 <= s <= have:
            raise LogError(f"the log has {have} entries, not {s}", code="audit.bad_size")


def root_at(conn: Connection, tree_size: int) -> bytes:
    """Root of the first ``tree_size`` entries: O(log n) reads."""
    _check_size(conn, tree_size)
    if tree_size == 0:
        return protocol.EMPTY_ROOT
    return bytes(_with_nodes(conn, lambda get: protocol.subtree_hash(get, 0, tree_size)))


def compact_range_at(conn: Connection, tree_size: int) -> CompactRange:
    """The compact range of the first ``tree_size`` entries (what an export of later entries starts from)."""
    _check_size(conn, tree_size)
    result: CompactRange = _with_nodes(conn, lambda get: CompactRange.at(get, tree_size))
    return result


def inclusion(conn: Connection, index: int, tree_size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of entry ``index`` in the tree of ``tree_size`` entries."""
    _check_size(conn, tree_size)
    result: list[bytes] = _with_nodes(conn, lambda get: protocol.inclusion_proof(get, index, tree_size))
    return result


def consistency(conn: Connection, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof from ``old_size`` to ``new_size``."""
    _check_size(conn, old_size, new_size)
    result: list[bytes] = _with_nodes(conn, lambda get: protocol.consistency_proof(get, old_size, new_size))
    return result


# --- signed heads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    size: int
    root: bytes
    signed_at: datetime
    note: bytes


def _head(row: Any) -> Head:
    return Head(int(row.size), bytes(row.root), row.signed_at, row.note.encode("utf-8"))


def latest_head(session: Session) -> Head | None:
    row = session.execute(select(AuditHead).order_by(AuditHead.size.desc()).limit(1)).scalars().first()  # type: ignore[attr-defined]
    return _head(row) if row is not None else None


def head_at(session: Session, tree_size: int) -> Head | None:
    row = session.get(AuditHead, tree_size)
    return _head(row) if row is not None else None


def sign_head(session: Session, key: SigningKey, party: str, now: datetime) -> Head | None:
    """Sign a checkpoint of the current tree if the log grew since the last head; returns it (else None).

    Runs under the log's lock, so heads are signed in size order even with
    several replicas, and the signing time never goes backwards.
    """
    conn = session.connection()
    cr = _lock_state(conn)
    last = latest_head(session)
    if cr.size == 0 or (last is not None and last.size >= cr.size):
        return None
    when = now.astimezone(UTC).replace(microsecond=0)
    if last is not None and last.signed_at > when:
        when = last.signed_at
    checkpoint = protocol.Checkpoint(
        protocol.log_origin(party), cr.size, cr.root(), (f"{protocol.TIME_PREFIX}{int(when.timestamp())}",)
    )
    note = protocol.sign_checkpoint(checkpoint, key)
    session.add(
        AuditHead(
            size=cr.size, root=checkpoint.root, signed_at=when, key_id=key.key_id, note=note.decode("utf-8")
        )
    )
    session.flush()
    return Head(cr.size, checkpoint.root, when, note)


def cosigned_note(session: Session, head: Head) -> bytes:
    """The head's note with every cosignature stored for it appended (what witnesses' clients read)."""
    lines = (
        session.execute(
            select(AuditCosignature.line)
            .where(AuditCosignature.head_size == head.size)
            .order_by(AuditCosignature.party)
        )
        .scalars()
        .all()
    )
    if not lines:
        return head.note
    note = protocol.parse_note(head.note)
    return note.with_signatures(protocol.parse_signature_line(line) for line in lines).to_bytes()


def cosigned_sizes(session: Session, party: str) -> int | None:
    """The largest of our heads that ``party`` cosigned (what it will ask the next head to extend)."""
    value = session.execute(
        select(func.max(AuditCosignature.head_size)).where(AuditCosignature.party == party)
    ).scalar_one_or_none()
    return None if value is None else int(value)

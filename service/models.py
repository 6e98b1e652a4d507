"""The node's tables (sqlmodel).

What is stored here is metadata and evidence: envelopes exactly as sent or
received (already encrypted to the recipient node), signed receipts, bundles
as received. Never decrypted content: ``Message.summary`` holds only
non-secret bookkeeping (sizes, kinds, ids), nothing a reader would need a
purpose for.

Every timestamp is a timezone-aware UTC ``datetime`` supplied by the caller
(``now``), never taken from the database server's clock.

The schema is created by the Alembic migrations in ``service/migrations``, not
by ``SQLModel.metadata.create_all``; a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session as _OrmSession
from sqlmodel import Field, SQLModel

# Naming convention so that constraint names are the same on SQLite and
# PostgreSQL and migrations can refer to them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BLOB_CHUNK_SIZE = 1024 * 1024  # bytes per BlobChunk row

PEER_STATUSES = ("active", "suspended")
USER_ROLES = ("clerk", "signatory", "reader", "operator", "auditor")
DIRECTIONS = ("out", "in")
MESSAGE_STATUSES = ("queued", "in_flight", "delivered", "parked", "rejected", "received")
OUTBOX_STATES = ("queued", "in_flight", "delivered", "parked")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zone type and hands back naive datetimes; PostgreSQL's
    ``timestamptz`` hands back aware ones. Naive values are refused on the way
    in (a naive "now" is a bug) and all values come back aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class Peer(SQLModel, table=True):
    """Another Party's node, as known from the bundle it handed us."""

    __tablename__ = "peer"
    __table_args__ = (CheckConstraint(_in("status", PEER_STATUSES), name="status"),)

    party: str = Field(sa_column=Column(String(16), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    endpoint: str = Field(sa_column=Column(String(500), nullable=False))
    fingerprint: str = Field(sa_column=Column(String(128), nullable=False))
    bundle: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    bundle_version: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(default="active", sa_column=Column(String(16), nullable=False))
    added_at: datetime = _ts()


class User(SQLModel, table=True):
    """A person (or service account) using the user or admin API with a bearer token."""

    __tablename__ = "user_account"  # "user" is reserved in PostgreSQL
    __table_args__ = (CheckConstraint(_in("role", USER_ROLES), name="role"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    clearance: str = Field(default="unrestricted", sa_column=Column(String(32), nullable=False))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    disabled: bool = Field(default=False, nullable=False)
    # For role "signatory": the key id of the signing authorisation this person signs with.
    signatory_key_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    created_at: datetime = _ts()


class Blob(SQLModel, table=True):
    """An envelope's bytes exactly as sent or received, stored as ``BlobChunk`` rows."""

    __tablename__ = "blob"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    sha256: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    chunk_count: int = Field(sa_column=Column(Integer, nullable=False))


class BlobChunk(SQLModel, table=True):
    """One piece (at most ``BLOB_CHUNK_SIZE`` bytes) of a blob; ``seq`` counts from 0."""

    __tablename__ = "blob_chunk"
    __table_args__ = (ForeignKeyConstraint(["blob_id"], ["blob.id"], ondelete="CASCADE"),)

    blob_id: int = Field(sa_column=Column(Integer, primary_key=True))
    seq: int = Field(sa_column=Column(Integer, primary_key=True))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Message(SQLModel, table=True):
    """An envelope sent to or received from a peer, with its delivery bookkeeping.

    Message ids are unique per sender, so (id, direction) is the key: our own
    outgoing ids and a peer's incoming ids live in different namespaces.
    """

    __tablename__ = "message"
    __table_args__ = (
        CheckConstraint(_in("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_in("status", MESSAGE_STATUSES), name="status"),
        ForeignKeyConstraint(["peer"], ["peer.party"]),
        ForeignKeyConstraint(["blob_id"], ["blob.id"]),
        Index("ix_message_peer_direction_created_at", "peer", "direction", "created_at"),
        # Not indexed by status: its updates stay on the page without new index entries (migration 0005).
    )

    id: str = Field(sa_column=Column(String(128), primary_key=True))
    direction: str = Field(sa_column=Column(String(3), primary_key=True))
    peer: str = Field(sa_column=Column(String(16), nullable=False))
    kind: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    thread_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True, index=True))
    in_reply_to: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    envelope_sha256: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    envelope_size: int = Field(sa_column=Column(BigInteger, nullable=False))
    blob_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    created_at: datetime = _ts()
    status: str = Field(sa_column=Column(String(16), nullable=False))
    receipt: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    receipt_status: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    receipt_verified: bool = Field(default=False, nullable=False)
    delivered_at: datetime | None = _ts(nullable=True)
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Outbox(SQLModel, table=True):
    """A pending (or finished) delivery of one outgoing message to its peer.

    Rows are claimed by delivery workers with a lease; a row whose lease ran
    out (the worker died) is claimed again. A delivered row is final.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("state", OUTBOX_STATES), name="state"),
        CheckConstraint("direction = 'out'", name="direction"),
        ForeignKeyConstraint(["message_id", "direction"], ["message.id", "message.direction"]),
        ForeignKeyConstraint(["peer"], ["peer.party"]),
        UniqueConstraint("message_id", "direction"),
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_outbox_state_claim_expires_at", "state", "claim_expires_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    message_id: str = Field(sa_column=Column(String(128), nullable=False))
    direction: str = Field(default="out", sa_column=Column(String(3), nullable=False))
    peer: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    state: str = Field(default="queued", sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = _ts()
    last_error: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    claimed_by: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    claim_expires_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    requeued_at: datetime | None = _ts(nullable=True)
    delivered_at: datetime | None = _ts(nullable=True)


class Event(SQLModel, table=True):
    """An entry of the audit log: something that happened, who did it, to what, with what outcome.

    ``seq``, ``entry`` (the canonical bytes that are the Merkle leaf) and
    ``leaf_hash`` are assigned when the row is flushed (``service.audit``);
    the other columns repeat the entry's fields for querying.
    """

    __tablename__ = "event"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    at: datetime = _ts(index=True)
    actor: str = Field(sa_column=Column(String(200), nullable=False))
    party: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    type: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    object_id: str | None = Field(default=None, sa_column=Column(String(200), nullable=True, index=True))
    outcome: str = Field(sa_column=Column(String(32), nullable=False))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger, nullable=False, unique=True, index=True)
    )
    entry: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=False))
    leaf_hash: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=False))


class Meta(SQLModel, table=True):
    """Small node-wide key/value facts (e.g. the node's own Party code, set at init)."""

    __tablename__ = "meta"

    key: str = Field(sa_column=Column(String(128), primary_key=True))
    value: str = Field(sa_column=Column(String(4000), nullable=False))


from service import case_models as _case_models  # noqa: E402,F401  (registers the workflow tables)

# --- the audit log (service/audit.py) ------------------------------------------------
#
# ``Event`` rows are the audit log's entries. An Event added to a session gets
# its position (``seq``), canonical bytes (``entry``, the Merkle leaf) and leaf
# hash when the session flushes, under the log's lock, in the same transaction
# as the state change it records (see ``_audit_log_on_flush`` below).


class AuditState(SQLModel, table=True):
    """The audit log's single row of state: its size and the compact range of its tree. Appenders lock it."""

    __tablename__ = "audit_state"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    frontier: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AuditNode(SQLModel, table=True):
    """The hash of one perfect subtree (level >= 1) of the log's tree, written once, when it is complete."""

    __tablename__ = "audit_node"

    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AuditHead(SQLModel, table=True):
    """A checkpoint (C2SP signed note) this node signed over its own log."""

    __tablename__ = "audit_head"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    signed_at: datetime = _ts()
    key_id: str = Field(sa_column=Column(String(128), nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))


class AuditCosignature(SQLModel, table=True):
    """A peer's cosignature (C2SP cosignature/v1 line) on one of this node's checkpoints."""

    __tablename__ = "audit_cosignature"
    __table_args__ = (
        ForeignKeyConstraint(["head_size"], ["audit_head.size"]),
        ForeignKeyConstraint(["party"], ["peer.party"]),
    )

    head_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    party: str = Field(sa_column=Column(String(16), primary_key=True))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    line: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = _ts()


class AuditPeerHead(SQLModel, table=True):
    """A checkpoint of a peer's log that this node checked and cosigned; the newest is the one to extend."""

    __tablename__ = "audit_peer_head"
    __table_args__ = (ForeignKeyConstraint(["party"], ["peer.party"]),)

    party: str = Field(sa_column=Column(String(16), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    cosignature: str = Field(sa_column=Column(Text, nullable=False))
    accepted_at: datetime = _ts()


class AuditAlert(SQLModel, table=True):
    """An audit alarm (e.g. a peer's log caught rewriting its history), with evidence, for operators."""

    __tablename__ = "audit_alert"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    at: datetime = _ts(index=True)
    party: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    code: str = Field(sa_column=Column(String(64), nullable=False))
    message: str = Field(sa_column=Column(String(2000), nullable=False))
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


@sa_event.listens_for(_OrmSession, "before_flush")
def _audit_log_on_flush(session: _OrmSession, _context: Any, _instances: Any) -> None:
    """Give every new ``Event`` its place in the audit log before it is inserted (service.audit)."""
    if any(isinstance(obj, Event) for obj in session.new):
        from service.audit import append_pending

        append_pending(session)


from service import admin_models as _admin_models  # noqa: E402,F401  (registers the admin tables: migration 0004)

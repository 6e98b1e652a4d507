"""The audit log: events become the leaves of a Merkle tree; signed heads, cosignatures, alerts.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26

``event`` gains ``seq`` (dense position in the log), ``entry`` (the canonical
bytes that are the Merkle leaf) and ``leaf_hash``. Events already recorded are
appended in ``id`` order, in batches, and the tree built from them is stored
(``audit_node``: every perfect subtree of level >= 1; ``audit_state``: size and
compact range). New tables: ``audit_head`` (this node's signed checkpoints),
``audit_cosignature`` (peers' cosignatures on them), ``audit_peer_head``
(peers' checkpoints this node cosigned) and ``audit_alert``.

The entry format is ``protocol.entry_bytes`` version 1; it is versioned, so this
migration keeps producing the same bytes if a later version is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

from protocol import CompactRange, entry_bytes, leaf_hash

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "audit_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_state"),
        sa.CheckConstraint("id = 1", name="ck_audit_state_singleton"),
    )
    op.create_table(
        "audit_node",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_audit_node"),
    )
    op.create_table(
        "audit_head",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        _ts("signed_at"),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_audit_head"),
    )
    op.create_table(
        "audit_cosignature",
        sa.Column("head_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("party", sa.String(16), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        _ts("received_at"),
        sa.PrimaryKeyConstraint("head_size", "party", name="pk_audit_cosignature"),
        sa.ForeignKeyConstraint(
            ["head_size"], ["audit_head.size"], name="fk_audit_cosignature_head_size_audit_head"
        ),
        sa.ForeignKeyConstraint(["party"], ["peer.party"], name="fk_audit_cosignature_party_peer"),
    )
    op.create_table(
        "audit_peer_head",
        sa.Column("party", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("cosignature", sa.Text(), nullable=False),
        _ts("accepted_at"),
        sa.PrimaryKeyConstraint("party", "size", name="pk_audit_peer_head"),
        sa.ForeignKeyConstraint(["party"], ["peer.party"], name="fk_audit_peer_head_party_peer"),
    )
    op.create_table(
        "audit_alert",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("party", sa.String(16), nullable=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_alert"),
    )
    op.create_index("ix_audit_alert_at", "audit_alert", ["at"])

    with op.batch_alter_table("event") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("entry", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("leaf_hash", sa.LargeBinary(), nullable=True))

    frontier = _backfill()
    op.get_bind().execute(
        sa.text("INSERT INTO audit_state (id, size, frontier) VALUES (1, :size, :frontier)"),
        {"size": frontier.size, "frontier": b"".join(frontier.hashes)},
    )

    with op.batch_alter_table("event") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("entry", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary(), nullable=False)
    op.create_index("ix_event_seq", "event", ["seq"], unique=True)


def _backfill() -> CompactRange:
    """Append the events recorded before the log existed, oldest first, building the tree as we go."""
    conn = op.get_bind()
    event = sa.table(
        "event",
        sa.column("id", sa.BigInteger()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String()),
        sa.column("party", sa.String()),
        sa.column("type", sa.String()),
        sa.column("object_id", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("detail", sa.JSON()),
        sa.column("seq", sa.BigInteger()),
        sa.column("entry", sa.LargeBinary()),
        sa.column("leaf_hash", sa.LargeBinary()),
    )
    node = sa.table(
        "audit_node",
        sa.column("level", sa.SmallInteger()),
        sa.column("idx", sa.BigInteger()),
        sa.column("hash", sa.LargeBinary()),
    )
    cr = CompactRange()
    last_id = None
    while True:
        query = sa.select(
            event.c.id,
            event.c.at,
            event.c.actor,
            event.c.party,
            event.c.type,
            event.c.object_id,
            event.c.outcome,
            event.c.detail,
        )
        query = query.order_by(event.c.id).limit(BATCH)
        if last_id is not None:
            query = query.where(event.c.id > last_id)
        rows = conn.execute(query).all()
        if not rows:
            return cr
        updates, nodes = [], []
        for row in rows:
            at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)
            seq = cr.size
            data = entry_bytes(
                seq=seq,
                at=at,
                actor=row.actor,
                party=row.party,
                type=row.type,
                object_id=row.object_id,
                outcome=row.outcome,
                detail=row.detail or {},
            )
            h = leaf_hash(data)
            nodes.extend({"level": lvl, "idx": idx, "hash": nh} for lvl, idx, nh in cr.append(h))
            updates.append({"b_id": row.id, "b_seq": seq, "b_entry": data, "b_leaf": h})
        conn.execute(
            event.update()
            .where(event.c.id == sa.bindparam("b_id"))
            .values(
                seq=sa.bindparam("b_seq"), entry=sa.bindparam("b_entry"), leaf_hash=sa.bindparam("b_leaf")
            ),
            updates,
        )
        if nodes:
            conn.execute(node.insert(), nodes)
        last_id = rows[-1].id


def downgrade() -> None:
    op.drop_index("ix_event_seq", table_name="event")
    with op.batch_alter_table("event") as batch:
        batch.drop_column("leaf_hash")
        batch.drop_column("entry")
        batch.drop_column("seq")
    op.drop_index("ix_audit_alert_at", table_name="audit_alert")
    op.drop_table("audit_alert")
    op.drop_table("audit_peer_head")
    op.drop_table("audit_cosignature")
    op.drop_table("audit_head")
    op.drop_table("audit_node")
    op.drop_table("audit_state")

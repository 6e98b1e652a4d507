"""Initial schema: peers, users, blobs, messages, outbox, events, meta.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Written by hand to match ``service/models.py`` (the storage tests compare the
two on SQLite and PostgreSQL). Constraint names follow the naming convention
set there, so later migrations can refer to them on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "peer",
        sa.Column("party", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(500), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("bundle_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("added_at"),
        sa.PrimaryKeyConstraint("party", name="pk_peer"),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="ck_peer_status"),
    )

    op.create_table(
        "user_account",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("clearance", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("signatory_key_id", sa.String(128), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_user_account"),
        sa.UniqueConstraint("token_hash", name="uq_user_account_token_hash"),
        sa.CheckConstraint(
            "role IN ('clerk', 'signatory', 'reader', 'operator', 'auditor')",
            name="ck_user_account_role",
        ),
    )

    op.create_table(
        "blob",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blob"),
    )
    op.create_index("ix_blob_sha256", "blob", ["sha256"])

    op.create_table(
        "blob_chunk",
        sa.Column("blob_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "seq", name="pk_blob_chunk"),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["blob.id"], name="fk_blob_chunk_blob_id_blob", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "message",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("peer", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(64), nullable=True),
        sa.Column("thread_id", sa.String(128), nullable=True),
        sa.Column("in_reply_to", sa.String(128), nullable=True),
        sa.Column("envelope_sha256", sa.String(64), nullable=False),
        sa.Column("envelope_size", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=True),
        sa.Column("receipt_status", sa.String(32), nullable=True),
        sa.Column("receipt_verified", sa.Boolean(), nullable=False),
        _ts("delivered_at", nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", "direction", name="pk_message"),
        sa.CheckConstraint("direction IN ('out', 'in')", name="ck_message_direction"),
        sa.CheckConstraint(
            "status IN ('queued', 'in_flight', 'delivered', 'parked', 'rejected', 'received')",
            name="ck_message_status",
        ),
        sa.ForeignKeyConstraint(["peer"], ["peer.party"], name="fk_message_peer_peer"),
        sa.ForeignKeyConstraint(["blob_id"], ["blob.id"], name="fk_message_blob_id_blob"),
    )
    op.create_index("ix_message_thread_id", "message", ["thread_id"])
    op.create_index("ix_message_envelope_sha256", "message", ["envelope_sha256"])
    op.create_index("ix_message_blob_id", "message", ["blob_id"])
    op.create_index("ix_message_peer_direction_created_at", "message", ["peer", "direction", "created_at"])
    op.create_index("ix_message_direction_status", "message", ["direction", "status"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("peer", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.String(2000), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        _ts("claim_expires_at", nullable=True),
        _ts("created_at"),
        _ts("requeued_at", nullable=True),
        _ts("delivered_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.CheckConstraint("state IN ('queued', 'in_flight', 'delivered', 'parked')", name="ck_outbox_state"),
        sa.CheckConstraint("direction = 'out'", name="ck_outbox_direction"),
        sa.ForeignKeyConstraint(
            ["message_id", "direction"],
            ["message.id", "message.direction"],
            name="fk_outbox_message_id_direction_message",
        ),
        sa.ForeignKeyConstraint(["peer"], ["peer.party"], name="fk_outbox_peer_peer"),
        sa.UniqueConstraint("message_id", "direction", name="uq_outbox_message_id_direction"),
    )
    op.create_index("ix_outbox_peer", "outbox", ["peer"])
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_state_claim_expires_at", "outbox", ["state", "claim_expires_at"])

    op.create_table(
        "event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _ts("at"),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("party", sa.String(16), nullable=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event"),
    )
    op.create_index("ix_event_at", "event", ["at"])
    op.create_index("ix_event_type", "event", ["type"])
    op.create_index("ix_event_object_id", "event", ["object_id"])

    op.create_table(
        "meta",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.String(4000), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("event")
    op.drop_table("outbox")
    op.drop_table("message")
    op.drop_table("blob_chunk")
    op.drop_table("blob")
    op.drop_table("user_account")
    op.drop_table("peer")

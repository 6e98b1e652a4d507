"""Agreement workflows: request threads, originals by post, directories, termination notices, drafts.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "thread",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("requesting_party", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(16), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("direction", sa.String(64), nullable=True),
        sa.Column("form", sa.String(64), nullable=True),
        sa.Column("confidentiality", sa.String(32), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("purpose_code", sa.String(64), nullable=True),
        sa.Column("case_number", sa.String(128), nullable=True),
        _ts("opened_at"),
        _ts("updated_at"),
        sa.Column("last_message_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_thread"),
    )
    op.create_index("ix_thread_peer", "thread", ["peer"])
    op.create_index("ix_thread_state", "thread", ["state"])

    op.create_table(
        "original",
        sa.Column("thread_id", sa.String(128), nullable=False),
        sa.Column("owed_by", sa.String(16), nullable=False),
        sa.Column("owed_to", sa.String(16), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("dispatched_on", sa.Date(), nullable=True),
        sa.Column("tracking_number", sa.String(200), nullable=True),
        sa.Column("received_on", sa.Date(), nullable=True),
        sa.Column("matches_electronic", sa.Boolean(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("thread_id", name="pk_original"),
    )

    op.create_table(
        "directory_version",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("party", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("directory", sa.JSON(), nullable=False),
        _ts("recorded_at"),
        sa.PrimaryKeyConstraint("id", name="pk_directory_version"),
        sa.UniqueConstraint("party", "version", name="uq_directory_version_party_version"),
    )
    op.create_index("ix_directory_version_party", "directory_version", ["party"])

    op.create_table(
        "termination_notice",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received_on", sa.Date(), nullable=False),
        sa.Column("given_by", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=True),
        _ts("recorded_at"),
        sa.PrimaryKeyConstraint("id", name="pk_termination_notice"),
    )

    op.create_table(
        "draft",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("attachment_blobs", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_draft"),
        sa.CheckConstraint("status IN ('draft', 'sent', 'discarded')", name="ck_draft_status"),
    )
    op.create_index("ix_draft_status", "draft", ["status"])

    op.create_table(
        "consent",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("thread_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("user_party", sa.String(16), nullable=False),
        sa.Column("provider_party", sa.String(16), nullable=False),
        sa.Column("purpose_code", sa.String(64), nullable=False),
        sa.Column("case_number", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=True),
        sa.Column("granted_case_number", sa.String(128), nullable=True),
        sa.Column("answer_message_id", sa.String(128), nullable=True),
        _ts("requested_at"),
        _ts("decided_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_consent"),
    )
    op.create_index("ix_consent_thread_id", "consent", ["thread_id"])
    op.create_index("ix_consent_item_id", "consent", ["item_id"])


def downgrade() -> None:
    op.drop_table("consent")
    op.drop_table("draft")
    op.drop_table("termination_notice")
    op.drop_table("directory_version")
    op.drop_table("original")
    op.drop_table("thread")

"""Admin: agreement configuration versions (Art. 12) and per-peer admin state.

Revision ID: 0004
Revises: 0003

Written by hand to match ``service/admin_models.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "agreement_config_version",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("reference", sa.String(500), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        _ts("recorded_at"),
        sa.PrimaryKeyConstraint("version", name="pk_agreement_config_version"),
    )
    op.create_table(
        "peer_admin",
        sa.Column("party", sa.String(16), nullable=False),
        _ts("suspended_at", nullable=True),
        sa.Column("suspended_reason", sa.String(500), nullable=True),
        sa.Column("acked_version", sa.Integer(), nullable=True),
        _ts("acked_at", nullable=True),
        _ts("push_attempted_at", nullable=True),
        sa.Column("push_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("party", name="pk_peer_admin"),
        sa.ForeignKeyConstraint(["party"], ["peer.party"], name="fk_peer_admin_party_peer"),
    )


def downgrade() -> None:
    op.drop_table("peer_admin")
    op.drop_table("agreement_config_version")

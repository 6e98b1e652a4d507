"""Message status is no longer indexed, and PostgreSQL leaves room on message pages for updates.

Revision ID: 0005
Revises: 0004

An outgoing message's row is written three times (queued, in flight,
delivered with its receipt). With ``status`` in an index, each update was a
new row version with a new entry in all six of the table's indexes; without it
PostgreSQL can update in place on the page (a HOT update: no index entries)
when the page has room, which ``fillfactor`` keeps for it.

The (direction, status) index also drew PostgreSQL's check of the outbox's
foreign key (message_id, direction) away from the primary key: planned once per
connection while the table was small and before autovacuum had analysed it,
the check read every outgoing message (1,210 index entries per check after
2,400 sends in a fresh database; now 1). Listing by status is rare (a clerk's
filter) and scans the peer/direction/time index or the table; what operators
look for by state (queued, parked) is indexed in the outbox. The metrics' count
of messages by direction and status (each scrape) now reads the table instead
of that index: both grow with the table. ``fillfactor`` applies to pages
written from now on.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Percent of each message page filled by inserts; the rest takes the updated versions (PostgreSQL).
MESSAGE_FILLFACTOR = 80


def upgrade() -> None:
    op.drop_index("ix_message_direction_status", table_name="message")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE message SET (fillfactor = {MESSAGE_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE message RESET (fillfactor)")
    op.create_index("ix_message_direction_status", "message", ["direction", "status"])

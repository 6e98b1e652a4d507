"""Envelope chunks on PostgreSQL: never compressed, and kept in the table's own page when they fit one.

Revision ID: 0006
Revises: 0005

An envelope is ciphertext: PostgreSQL's attempt to compress a chunk over 2 KB
never succeeds, and a chunk that was then moved out of line cost three more
row and index writes in the TOAST table. A small envelope (a document without
attachments, about 4 KB) now stays in its row; a bigger chunk (up to
``BLOB_CHUNK_SIZE``) still goes out of line, uncompressed. SQLite has no such
settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The most PostgreSQL allows: a row up to this size is not moved out of line.
TOAST_TUPLE_TARGET = 8160


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE blob_chunk ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute(f"ALTER TABLE blob_chunk SET (toast_tuple_target = {TOAST_TUPLE_TARGET})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE blob_chunk RESET (toast_tuple_target)")
    op.execute("ALTER TABLE blob_chunk ALTER COLUMN data SET STORAGE EXTENDED")

"""PostgreSQL: a change to ``user_account`` is announced, so a node may keep the tokens it checked.

Revision ID: 0007
Revises: 0006

Every statement that changes ``user_account`` (insert, update, delete,
truncate; made by the CLI, the admin API or by hand) notifies the channel
``prolink_user_account`` when its transaction commits. A node's token cache
(``service.token_cache``) listens and forgets what it held. SQLite has no
notifications: there every request reads its token.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE FUNCTION prolink_user_account_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('prolink_user_account', '');
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER user_account_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_account
        FOR EACH STATEMENT EXECUTE FUNCTION prolink_user_account_changed()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER user_account_changed ON user_account")
    op.execute("DROP FUNCTION prolink_user_account_changed()")

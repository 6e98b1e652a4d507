"""Bring a node's database schema up to date (Alembic, run in-process).

The Alembic configuration is built here rather than read from an ini file, and
the scripts are found next to this module, so migrating works the same from a
source checkout and from an installed package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from service.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic ``Config`` pointing at the packaged migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revisions() -> tuple[str, ...]:
    """The newest revisions the code knows about (one per branch; sorted)."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def current_revisions(engine_or_url: Engine | str) -> tuple[str, ...]:
    """The revisions the database is at (empty for an empty database; sorted)."""
    engine, owned = _engine(engine_or_url)
    try:
        with engine.connect() as conn:
            return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
    finally:
        if owned:
            engine.dispose()


def is_up_to_date(engine_or_url: Engine | str) -> bool:
    """True if the database has every migration the code knows about."""
    return current_revisions(engine_or_url) == head_revisions()


def head_revision() -> str | None:
    """The newest revision, where there is a single branch (``None`` without migrations)."""
    heads = head_revisions()
    if len(heads) > 1:
        raise RuntimeError(f"several migration heads: {', '.join(heads)}; use head_revisions()")
    return heads[0] if heads else None


def current_revision(engine_or_url: Engine | str) -> str | None:
    """The revision the database is at, where there is a single branch (None for an empty database)."""
    revs = current_revisions(engine_or_url)
    if len(revs) > 1:
        raise RuntimeError(f"database is at several heads: {', '.join(revs)}; use current_revisions()")
    return revs[0] if revs else None


def upgrade(engine_or_url: Engine | str, revision: str = "heads") -> None:
    """Apply every migration up to ``revision`` (default: the newest on every branch)."""
    _run(engine_or_url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Undo migrations down to ``revision`` (``"base"`` for an empty schema)."""
    _run(engine_or_url, lambda cfg: command.downgrade(cfg, revision))


def _run(engine_or_url: Engine | str, action: Callable[[Config], None]) -> None:
    engine, owned = _engine(engine_or_url)
    try:
        with engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            action(cfg)
            if conn.in_transaction():
                conn.commit()
    finally:
        if owned:
            engine.dispose()


def _engine(engine_or_url: Engine | str) -> tuple[Engine, bool]:
    if isinstance(engine_or_url, Engine):
        return engine_or_url, False
    return make_engine(engine_or_url), True

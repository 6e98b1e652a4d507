"""Shared fixtures: databases for the storage and node tests.

PostgreSQL: ``PROLINK_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) names a server and a
database we may connect to; each test gets a fresh database of its own,
dropped afterwards. Without a server the PostgreSQL tests are skipped, unless
``PROLINK_REQUIRE_POSTGRES=1`` (CI), which makes them fail instead. Every database
a test gets appends a line (test id, database) to the file named by
``PROLINK_PG_RAN_FILE``, so CI can prove they ran.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _admin_conninfo() -> tuple[str, Any]:
    """(libpq URL for psycopg, SQLAlchemy URL object) of the maintenance database."""
    from sqlalchemy.engine import make_url

    url = make_url(os.environ.get("PROLINK_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL))
    if url.get_backend_name() != "postgresql":
        raise pytest.UsageError(f"PROLINK_TEST_POSTGRES_URL is not a PostgreSQL URL: {url!r}")
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return libpq, url


class _PostgresDatabases:
    """Creates fresh, uniquely named databases on demand and drops them all at the end."""

    def __init__(self, nodeid: str) -> None:
        self._nodeid = nodeid
        self._admin: Any = None
        self._names: list[str] = []
        self._url: Any = None

    def create(self) -> str:
        import psycopg
        from psycopg import sql

        if self._admin is None:
            libpq, self._url = _admin_conninfo()
            try:
                self._admin = psycopg.connect(libpq, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:
                where = self._url.render_as_string(hide_password=True)
                reason = f"PostgreSQL unreachable at {where}: {exc}"
                if os.environ.get("PROLINK_REQUIRE_POSTGRES") == "1":
                    pytest.fail(reason)
                pytest.skip(reason)
        name = f"prolink_t_{secrets.token_hex(6)}"
        self._admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._names.append(name)
        ran_file = os.environ.get("PROLINK_PG_RAN_FILE")
        if ran_file:
            with Path(ran_file).open("a", encoding="utf-8") as f:
                f.write(f"{self._nodeid} {name}\n")
        return str(
            self._url.set(drivername="postgresql+psycopg", database=name).render_as_string(
                hide_password=False
            )
        )

    def drop_all(self) -> None:
        from psycopg import sql

        if self._admin is None:
            return
        try:
            for name in self._names:
                self._admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        finally:
            self._admin.close()


@pytest.fixture
def postgres_database(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """A factory: each call returns the URL of another brand-new, empty PostgreSQL database.

    Nothing touches PostgreSQL until the first call, so a test may take this
    fixture and only call it on its PostgreSQL variant. All databases made are
    dropped after the test.
    """
    dbs = _PostgresDatabases(request.node.nodeid)
    try:
        yield dbs.create
    finally:
        dbs.drop_all()


@pytest.fixture
def postgres_url(postgres_database: Callable[[], str]) -> str:
    """URL (``postgresql+psycopg://``) of a brand-new, empty database, dropped after the test."""
    return postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a new SQLite database file (WAL needs a real file, not :memory:)."""
    return f"sqlite:///{tmp_path / 'node.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL: an empty database's URL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("sqlite_url"))

"""Database engines and transactions for the node (SQLite or PostgreSQL).

SQLite is the embedded default: WAL journal, ``synchronous=FULL`` (a commit is
on disk before the peer gets its receipt), foreign keys on, and every
transaction begun with ``BEGIN IMMEDIATE`` so that two writers queue on the
busy timeout instead of failing half-way with "database is locked". A read-only
transaction can ask for a plain deferred ``BEGIN`` (see ``session_scope``).

PostgreSQL (``postgresql+psycopg://``) is for production and several replicas.

This module never reads configuration itself: callers pass the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, cast

from sqlalchemy import bindparam, event, func, literal_column, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, StatementError
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlmodel import Session, create_engine

from service.driver_writes import driver_form, read_form, rows_of

SQLITE_BUSY_TIMEOUT_MS = 30_000

# One writer at a time per SQLite file within this process. SQLite allows one
# writer anyway; queueing on a Python lock wakes the next writer the moment the
# last one commits, whereas SQLite's busy handler polls with sleeps of up to
# 100 ms, which under concurrent writes cost far more than the writes did.
# Other processes (the CLI beside `prolink serve`) still meet the busy timeout.
_sqlite_writer_locks: dict[str, threading.RLock] = {}
_sqlite_writer_locks_guard = threading.Lock()

# Execution option naming how a SQLite transaction begins: "IMMEDIATE" (default)
# or "DEFERRED". Ignored on PostgreSQL.
SQLITE_BEGIN = "prolink_sqlite_begin"


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def is_postgresql(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "postgresql"


def make_engine(database_url: str, *, echo: bool = False) -> Engine:
    """An engine for ``database_url`` with the node's durability settings applied."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(database_url, echo=echo)
    if backend == "postgresql":
        if url.drivername == "postgresql":
            # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
            url = url.set(drivername="postgresql+psycopg")
        return _postgresql_engine(create_engine(url, echo=echo, pool_size=10, max_overflow=10))
    raise ValueError(f"unsupported database: {backend!r} (use sqlite:/// or postgresql+psycopg://)")


#: A pooled PostgreSQL connection idle for longer than this is pinged before use (see ``_postgresql_engine``).
PING_IF_IDLE_SECONDS = 2.0


def _postgresql_engine(engine: Engine) -> Engine:
    """Ping a pooled connection before use only if it sat idle (a server restart or an idle timeout).

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip and a
    sixth of the node's CPU per message under load. A connection returned
    moments ago is used as it is; if the server went away in those moments, the
    one transaction fails with ``database.unavailable`` (503), SQLAlchemy drops
    the whole pool, and the next transaction connects afresh.
    """

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()
        record.info.pop(_COMMITTED_IN_PIPELINE, None)
        if record.info.pop(_BEGUN_BY_US, False) and dbapi_connection is not None:
            try:  # autocommit off again (``read_together`` turned it on); the transaction is over by now
                dbapi_connection.autocommit = False
            except Exception as exc:  # noqa: BLE001 - broken: its transaction status is unknown; a new one next time
                record.invalidate(exc)

    @event.listens_for(engine, "before_cursor_execute")
    def _not_after_commit(conn: Connection, *_args: Any) -> None:
        if conn.info.get(_COMMITTED_IN_PIPELINE):
            raise RuntimeError(
                "a statement after the transaction was committed (commit_pipelined must be its last)"
            )

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("returned_at", 0.0) <= PING_IF_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: the pool discards it and connects again (up to 3 times)
            raise DisconnectionError(f"stale database connection: {type(exc).__name__}") from exc

    return engine


def _sqlite_engine(database_url: str, *, echo: bool, create_file: bool = True) -> Engine:
    """The SQLite engine; ``create_file``: make the database file first (owner-only) if it is missing.

    Never with ``create_file`` once the process has the database open: closing any
    descriptor of the file drops every POSIX lock the process holds on it, SQLite's
    included, and another process may then check the WAL out from under it.
    """
    database = make_url(database_url).database
    if (
        create_file
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and os.path.isdir(os.path.dirname(os.path.abspath(database)))
    ):
        # The database holds case metadata: create it owner-only (SQLite gives its -wal and -shm files
        # the database file's permissions), whatever the process umask.
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    engine = create_engine(
        database_url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (which would
        # begin lazily and never with IMMEDIATE); we emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")).upper()
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"bad {SQLITE_BEGIN}: {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


_READER_ATTRIBUTE = "_prolink_read_only"  # where ``read_only`` keeps an engine's reader
_UNWRAPPED_ATTRIBUTE = "_prolink_unwrapped_reads"  # where ``unwrapped_reads`` keeps it
_LOOP_READER_ATTRIBUTE = "_prolink_loop_reader"  # where ``loop_reader`` keeps it


def loop_reader(engine: Engine) -> Engine:
    """For the few SQLite reads the event loop makes itself (the token check, a reply's lookups): the
    same database through a pool of its own, deferred transactions like ``read_only``.

    The loop never waits for a connection: it reads one thing at a time, with no
    await inside, so one connection of this pool is always free; from the shared
    pool it could wait while threads hold every connection (streams hold one
    while the loop sends what they read), and the loop would stall them all.
    Made once per engine and kept on it. SQLite only.
    """
    if engine.dialect.name != "sqlite":
        raise ValueError("loop_reader is for SQLite: a database server is never read from the event loop")
    # The file exists and this process has it open: touching it would drop SQLite's locks (above).
    return _kept_on(
        engine,
        _LOOP_READER_ATTRIBUTE,
        lambda: read_only(
            _sqlite_engine(engine.url.render_as_string(hide_password=False), echo=False, create_file=False)
        ),
    )


def _kept_on(engine: Engine, attribute: str, make: Callable[[], Engine]) -> Engine:
    """``make()``'s engine, made once per ``engine`` and kept on it (in ``attribute``), so it goes when
    ``engine`` goes."""
    derived: Engine | None = engine.__dict__.get(attribute)
    if derived is None:
        derived = engine.__dict__[attribute] = make()
    return derived


_LOOP_CONNECTIONS_ATTRIBUTE = "_prolink_loop_connections"  # ``loop_fetchall``'s connections (per thread)


def _for_driver(
    engine: Engine, statement: Executable | ClauseElement, params: Mapping[str, Any]
) -> tuple[str, Any]:
    """A read's SQL and parameters as ``engine``'s driver takes them (``driver_writes``: compiled once,
    SQLAlchemy's type processing applied to the parameters); raises for one it cannot take (an
    expanding parameter)."""
    form = read_form(engine.dialect, statement, params)
    if form is None:
        raise ValueError(f"not a statement for the driver directly (expanding parameter?): {statement}")
    return form.sql, form.parameters([params])[0]


def loop_fetchall(
    engine: Engine, statement: ClauseElement, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """One SELECT read on the event loop, straight through the sqlite3 driver: its rows, as stored.

    For the reads the loop makes on every request (the token check). Going through
    SQLAlchemy's ``Connection`` (pool check-out, events, result objects) costs
    several times the read itself; here each thread keeps one connection of the
    ``loop_reader`` pool for good and runs the statement, compiled once, in
    autocommit mode: a snapshot of its own that ends when its rows are fetched,
    so it never holds back a checkpoint. Values come as SQLite stores them, without
    SQLAlchemy's type processing (a boolean is 0 or 1, a timestamp a string): for
    statements whose columns need none, and whose parameters are all named
    ``bindparam``s, none expanding. A driver error comes out as SQLAlchemy's (``OperationalError``:
    the API answers 503) and the connection is dropped.
    """
    sql, values = _for_driver(engine, statement, params)
    reader = loop_reader(engine)
    local: threading.local | None = reader.__dict__.get(_LOOP_CONNECTIONS_ATTRIBUTE)
    if local is None:  # (not setdefault: that would build a new one on every read)
        local = reader.__dict__.setdefault(_LOOP_CONNECTIONS_ATTRIBUTE, threading.local())
    held = getattr(local, "connection", None)
    if held is None:
        held = local.connection = reader.raw_connection()  # kept: one per thread, checked out for good
    try:
        return held.dbapi_connection.execute(sql, values).fetchall()  # type: ignore[union-attr,no-any-return]
    except sqlite3.Error as exc:
        local.connection = None
        held.invalidate()
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc


_LOOP_PG_ATTRIBUTE = "_prolink_loop_pg"  # ``loop_fetchall_async``'s readers: event loop -> ``_LoopReader``
#: The longest a read on the loop's connection may take before it is given up (503) and the connection
#: dropped: a connection a firewall silently cut would otherwise hold every token check until TCP gives up.
LOOP_READ_TIMEOUT_SECONDS = 10.0


class _LoopReader:
    """One event loop's asynchronous psycopg connection (``loop_fetchall_async``): made by one coroutine
    while the others wait for it, replaced when it fails."""

    def __init__(self, libpq: str) -> None:
        self.libpq = libpq
        self.conn: Any = None
        self.connecting = asyncio.Lock()

    async def connection(self) -> Any:
        import psycopg

        conn = self.conn
        if conn is not None and not conn.closed:  # the usual case: no lock to take
            return conn
        async with self.connecting:
            if self.conn is None or self.conn.closed:
                # Keepalives: a connection cut without a word (NAT, firewall) is noticed in about a minute.
                self.conn = await psycopg.AsyncConnection.connect(
                    self.libpq,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                )
            return self.conn

    async def drop(self, conn: Any) -> None:
        """Forget ``conn`` (if it is still the one in use: another coroutine may have replaced it) and
        close it."""
        import psycopg

        if self.conn is conn:
            self.conn = None
        with contextlib.suppress(psycopg.Error):
            await conn.close()


async def loop_fetchall_async(
    engine: Engine, statement: ClauseElement, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """PostgreSQL: ``loop_fetchall`` awaited on the event loop itself, with no hop to a worker thread.

    Each event loop keeps one asynchronous psycopg connection (autocommit: each
    statement its own snapshot) for the reads it makes on every request (the
    token check). A hop to a worker thread and back, contending for the
    interpreter, costs more than the round trip to the server. Concurrent reads
    queue on the connection; while it is being made, they wait for it rather
    than each making their own. A connection found dead (the server restarted,
    an idle timeout) is replaced and the read tried once more on the new one;
    otherwise a driver error, or a read over ``LOOP_READ_TIMEOUT_SECONDS``, comes
    out as SQLAlchemy's ``OperationalError`` (the API answers 503). Values come
    as psycopg gives them, without SQLAlchemy's type processing; parameters are
    the statement's named ``bindparam``s, none expanding. ``close_loop_connections`` closes it.
    """
    import psycopg

    sql, values = _for_driver(engine, statement, params)
    loop = asyncio.get_running_loop()
    readers: dict[Any, _LoopReader] | None = engine.__dict__.get(_LOOP_PG_ATTRIBUTE)
    reader = readers.get(loop) if readers is not None else None
    if reader is None:
        readers = engine.__dict__.setdefault(_LOOP_PG_ATTRIBUTE, {})
        libpq = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        reader = readers.setdefault(loop, _LoopReader(libpq))
    for attempt in (1, 2):
        conn = None
        try:
            conn = await reader.connection()
            async with asyncio.timeout(LOOP_READ_TIMEOUT_SECONDS):
                cursor = await conn.execute(sql, values)
                rows = await cursor.fetchall()
            return [tuple(row) for row in rows]
        except TimeoutError as exc:
            if conn is not None:
                await reader.drop(conn)
            raise OperationalError(sql, values, exc) from exc
        except psycopg.Error as exc:
            if conn is not None and (conn.broken or conn.closed):  # it had gone (a restart, an idle timeout)
                await reader.drop(conn)
                if attempt == 1:
                    continue  # once more, on a new connection
            raise DBAPIError.instance(sql, values, exc, psycopg.Error) from exc
    raise AssertionError("unreachable")  # pragma: no cover - the second attempt returns or raises


async def close_loop_connections(engine: Engine) -> None:
    """Close the connection ``loop_fetchall_async`` keeps for the running event loop, if any."""
    reader = engine.__dict__.get(_LOOP_PG_ATTRIBUTE, {}).pop(asyncio.get_running_loop(), None)
    if reader is not None and reader.conn is not None:
        await reader.drop(reader.conn)


def read_only(engine: Engine) -> Engine:
    """The same engine, but its SQLite transactions begin deferred (readers never queue).

    Made once per engine (every read transaction asks for it) and kept on the engine itself, so it
    goes when the engine goes.
    """
    return _kept_on(engine, _READER_ATTRIBUTE, lambda: engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"}))


def unwrapped_reads(engine: Engine) -> Engine:
    """For reads that need no transaction around them: one statement, or several over rows that never
    change once written (blobs). On PostgreSQL each statement runs on its own (autocommit), which spares
    the ``BEGIN`` and ``COMMIT`` round trips; on SQLite it is ``read_only`` (a transaction costs nothing
    there). Never for a read whose statements must see one snapshot of rows that change.
    """
    if engine.dialect.name == "sqlite":
        return read_only(engine)
    return _kept_on(
        engine, _UNWRAPPED_ATTRIBUTE, lambda: engine.execution_options(isolation_level="AUTOCOMMIT")
    )


def write_pipelined(conn: Connection, writes: Sequence[tuple[Executable, Any]]) -> None:
    """Run ``writes`` (statement, parameters), whose results nobody reads, in ``conn``'s transaction,
    in order.

    On PostgreSQL they go to the server together (psycopg's pipeline mode): one
    round trip for all of them instead of one each, and the server's answers are
    read once, at the end. A failure raises as SQLAlchemy's error for it
    (``IntegrityError``, ``OperationalError``...), as from ``conn.execute``.
    No statement may return rows: not even the generated key that SQLAlchemy
    asks back for a one-row ``INSERT`` into a table with one (use ``insert(...).inline()``).
    """
    if not writes:
        return  # (an empty pipeline would still cost a round trip to sync)
    if conn.dialect.name != "postgresql":
        _run_writes(conn, writes)
        return
    with _driver_errors(), _pipeline(conn.connection.driver_connection):
        _run_writes(conn, writes)


@contextmanager
def _driver_errors() -> Iterator[None]:
    """A psycopg error raised in the block (as a pipeline is read, outside SQLAlchemy's own wrapping) comes
    out as SQLAlchemy's, as from ``conn.execute``."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc


def _pipeline(pg: Any) -> contextlib.AbstractContextManager[Any]:
    """``pg``'s pipeline, its statements sent together when it syncs or ends (``service.pg_pipeline``,
    imported here: psycopg is imported only where PostgreSQL is used)."""
    from service.pg_pipeline import buffered_pipeline

    return buffered_pipeline(pg)


def _run_writes(conn: Connection, writes: Sequence[tuple[Executable, Any]]) -> None:
    """Run ``writes`` in order on ``conn``'s driver connection (``driver_writes``: compiled once, SQLAlchemy's
    type processing applied); a write it cannot run as SQLAlchemy would goes through ``conn.execute``."""
    _refuse_after_pipelined_commit(conn)
    driver = cast(Any, conn.connection.driver_connection)
    sqlite = conn.dialect.name == "sqlite"
    for statement, parameters in writes:
        rows = rows_of(parameters)
        form = driver_form(conn.dialect, statement, rows)
        if form is None:
            conn.execute(statement, parameters)
            continue
        try:
            values = form.parameters(rows)
        except Exception as exc:  # a type's bind processor refused a value: as SQLAlchemy raises it
            raise StatementError(f"({type(exc).__name__}) {exc}", form.sql, None, exc) from exc
        # SQLite's connection runs statements itself; psycopg's cursor runs them in the caller's pipeline,
        # whose errors are read, and raised, as it ends.
        cursor = driver if sqlite else driver.cursor()
        try:
            if len(values) == 1:
                cursor.execute(form.sql, values[0])
            else:
                cursor.executemany(form.sql, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(form.sql, values, exc, sqlite3.Error) from exc


def _refuse_after_pipelined_commit(conn: Connection) -> None:
    """Statements given to the driver directly (``_run_writes``, ``read_together``) pass no
    ``before_cursor_execute`` guard: the same refusal, checked where they are given."""
    if conn.info.get(_COMMITTED_IN_PIPELINE):
        raise RuntimeError(
            "a statement after the transaction was committed (commit_pipelined must be its last)"
        )


# ``read_together`` and ``commit_pipelined``: PostgreSQL transactions of two round trips.
_BEGUN_BY_US = "prolink_begun_by_us"  # pool record info: we sent this transaction's BEGIN (autocommit on)
_COMMITTED_IN_PIPELINE = "prolink_committed"  # connection info: commit_pipelined committed this transaction


def read_together(
    session: Session, reads: Sequence[tuple[Executable, Mapping[str, Any]]]
) -> list[Sequence[Any]]:
    """The rows of each of ``reads`` (statement, parameters), read at the start of ``session``'s transaction.

    On PostgreSQL they go to the server together with the transaction's BEGIN,
    in one pipeline: one round trip for all of them, instead of one each and one
    more for the BEGIN (psycopg waits for a BEGIN of its own before the first
    statement of a transaction, pipeline or not). For that the connection is put
    in autocommit mode and the BEGIN sent as a statement (a plain one: the engine
    sets no isolation level); it leaves autocommit when it goes back to the pool.
    A statement may write (``UPDATE ... RETURNING``)
    and may lock (``FOR UPDATE``); its parameters are all named bind parameters,
    none expanding (``= ANY(...)`` takes a list). Parameters get SQLAlchemy's type
    processing (``driver_writes``); rows are tuples, values as psycopg gives them,
    without it: for columns that need none.
    On SQLite each statement simply runs (a read there costs no round trip).
    """
    conn = session.connection()
    _refuse_after_pipelined_commit(conn)
    if conn.dialect.name != "postgresql":
        return [conn.execute(statement, params).all() for statement, params in reads]
    from psycopg.pq import TransactionStatus

    pg = cast(Any, conn.connection.driver_connection)
    statements = [_for_driver(conn.engine, statement, params) for statement, params in reads]
    with _driver_errors():
        begin = pg.pgconn.transaction_status == TransactionStatus.IDLE
        if begin:
            pg.autocommit = True
            conn.info[_BEGUN_BY_US] = True  # (the pooled connection's: the pool's checkin sees it)
        cursors = []
        with _pipeline(pg):  # (leaving it syncs once and receives every result: no sync() of our own)
            if begin:
                pg.execute(b"BEGIN")
            for sql, values in statements:
                cursor = pg.cursor()
                cursor.execute(sql, values)
                cursors.append(cursor)
        return [cursor.fetchall() for cursor in cursors]


def new_ids(table: str, count: int) -> tuple[Executable, dict[str, Any]]:
    """PostgreSQL: the read (for ``read_together``) that draws ``count`` new ids from ``table``'s ``id``
    sequence, one per row, so that rows can be inserted with their ids in a pipeline instead of one
    ``INSERT ... RETURNING`` round trip that hands them back."""
    return _new_ids_statement(table), {"count": count}


@functools.cache
def _new_ids_statement(table: str) -> Executable:  # (one per table: its compiled form is kept by identity)
    # The sequence's name is looked up once per statement (a scalar subquery: an InitPlan), not per row.
    sequence = select(func.pg_get_serial_sequence(literal_column(f"'{table}'"), literal_column("'id'")))
    series = func.generate_series(literal_column("1"), bindparam("count"))
    return select(func.nextval(sequence.scalar_subquery())).select_from(series)


def commit_pipelined(session: Session, writes: Sequence[tuple[Executable, Any]]) -> None:
    """``write_pipelined``, then commit: on PostgreSQL, in a transaction ``read_together`` began, the COMMIT
    goes in the same pipeline as the writes (one round trip for both), and ``session``'s own commit finds
    nothing left to do. Must be the transaction's last statement (a later one raises). Elsewhere, or with ORM
    changes still to flush (which the session writes at its commit, after these), the writes run and the
    commit is left to the session."""
    conn = session.connection()
    _refuse_after_pipelined_commit(conn)
    if (
        conn.dialect.name != "postgresql"
        or not conn.info.get(_BEGUN_BY_US)
        or session.new
        or session.dirty
        or session.deleted
    ):
        write_pipelined(conn, writes)
        return
    pg = cast(Any, conn.connection.driver_connection)
    with _driver_errors(), _pipeline(pg):
        _run_writes(conn, writes)
        pg.execute(b"COMMIT")
    conn.info[_COMMITTED_IN_PIPELINE] = True  # (autocommit goes off when the pool takes it back)


def write_or_defer(
    conn: Connection, writes: Sequence[tuple[Executable, Any]], defer: list[tuple[Executable, Any]] | None
) -> None:
    """Run ``writes`` now (``write_pipelined``), or, given ``defer``, append them to it for the caller to
    run with its own writes, in one pipeline."""
    if defer is None:
        write_pipelined(conn, writes)
    else:
        defer.extend(writes)


@contextmanager
def session_scope(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """One transaction: commit if the block succeeds, roll back if it raises.

    Objects stay readable after the commit (``expire_on_commit=False``) so that
    callers can use what they wrote without another round trip.
    """
    bind = read_only(engine) if readonly else engine
    with nullcontext() if readonly else writer_lock(engine):
        session = Session(bind=bind, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def writer_lock(engine: Engine) -> threading.RLock | nullcontext[None]:
    """What a write transaction on ``engine`` holds in this process: its SQLite file's lock, or nothing."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    key = str(engine.url.database)
    lock = _sqlite_writer_locks.get(key)
    if lock is None:
        with _sqlite_writer_locks_guard:
            lock = _sqlite_writer_locks.setdefault(key, threading.RLock())
    return lock

"""CPU per stored send: ``Node._store_sends`` with groups of messages against groups of one, in one run.

The store is what group commit amortises: one transaction (begin, lifecycle
read, audit-log lock, commit) per group, and since the batched writes one
statement per table per group. Messages are composed, signed and sealed
beforehand (not measured); each round stores fresh ones on SQLite in a
temporary directory, or with ``--postgres`` on a new PostgreSQL database.
Printed: CPU microseconds per message for each group size (best of three
rounds, ``time.process_time``; on PostgreSQL also the server processes' CPU,
read from /proc) and its ratio to groups of one. On PostgreSQL also the
wall-clock time of storing one message alone (median), as a multiple of a bare
round trip to the server measured in the same run: roughly how many round
trips a store costs where the server is across a network.

    python bench/bench_store.py                 # groups of 8 against groups of 1
    python bench/bench_store.py --group 16 --groups 100
    python bench/bench_store.py --postgres      # KZ on a fresh PostgreSQL database (dropped after)
    python bench/bench_store.py --statements    # also print the statements one stored group sends
    python bench/bench_store.py --postgres --delay-ms 0.25   # the server "across a network"
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from sqlalchemy import event, make_url, select  # noqa: E402

from bench.bench_exchange import DEFAULT_PG_URL, Postgres, process_cpu, russian_document  # noqa: E402
from bench.delay_proxy import delayed  # noqa: E402
from service import demo  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.models import User  # noqa: E402
from service.server import build_node  # noqa: E402
from service.user_api import compose_for  # noqa: E402


def cpu_per_message(
    node,
    sealed: list,
    group: int,
    rounds: int = 3,  # type: ignore[no-untyped-def]
    server_cpu: Callable[[], float] = lambda: 0.0,
) -> tuple[float, float]:
    """Best of ``rounds``: CPU seconds per message storing ``sealed`` in groups of ``group``, in this
    process and (``server_cpu``) in the database server."""
    per_round = len(sealed) // rounds
    best = (float("inf"), 0.0)
    for r in range(rounds):
        part = sealed[r * per_round : (r + 1) * per_round]
        started, server_started = time.process_time(), server_cpu()
        for i in range(0, len(part), group):
            node._store_sends(part[i : i + group])
        used = ((time.process_time() - started) / len(part), (server_cpu() - server_started) / len(part))
        best = min(best, used)
    return best


def wall_per_store(node, sealed: list) -> float:  # type: ignore[no-untyped-def]
    """Median wall-clock seconds of storing one message alone (a transaction of its own)."""
    times = []
    for one in sealed:
        started = time.perf_counter()
        node._store_sends([one])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def wall_per_round_trip(engine, count: int) -> float:  # type: ignore[no-untyped-def]
    """Median wall-clock seconds of one bare round trip to the database (``SELECT 1``, autocommit)."""
    times = []
    with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        for _ in range(count):
            started = time.perf_counter()
            conn.exec_driver_sql("SELECT 1").all()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def backend_cpu(postgres: Postgres, database: str) -> Callable[[], float]:
    """CPU seconds used so far by the server processes serving ``database`` (Linux /proc)."""

    def used() -> float:
        pids = postgres.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
        return sum(process_cpu(pid) for (pid,) in pids)

    return used


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--group", type=int, default=8, help="messages per group (against groups of 1)")
    parser.add_argument("--groups", type=int, default=150, help="groups per round")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_PG_URL,
        default=None,
        metavar="URL",
        help=f"store on a new PostgreSQL database made through URL ({DEFAULT_PG_URL})",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="print the SQL statements one stored group sends (after the figures)",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="with --postgres: reach it through a proxy that adds this much each way "
        "(bench/delay_proxy.py), as a server across a network would",
    )
    parser.add_argument("--keep-database", action="store_true", help="with --postgres: do not drop it")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    postgres = Postgres(args.postgres) if args.postgres else None
    if postgres is not None and (why := postgres.available()):
        sys.exit(f"PostgreSQL at {args.postgres} is not available: {why}")
    try:
        run(args, postgres)
    finally:
        if postgres is not None:
            postgres.drop_all()


def run(args: argparse.Namespace, postgres: Postgres | None) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        url = postgres.create() if postgres else None
        database = make_url(url).database if url else None
        if url and args.delay_ms:
            url = stack.enter_context(delayed(url, args.delay_ms))
            print(f"PostgreSQL through a proxy that adds {args.delay_ms} ms each way")
        kz = demo.setup_party(root, "KZ", "Kaz", url)
        by = demo.setup_party(root, "BY", "Bel")
        demo.introduce(kz, by)
        demo.introduce(by, kz)
        node = build_node(kz.data_dir)
        with session_scope(node.engine, readonly=True) as s:
            key_id = s.execute(
                select(User.signatory_key_id).where(User.signatory_key_id.is_not(None))
            ).scalar_one()  # type: ignore[union-attr]
        signatory, recipient = node.signatory(key_id), node.peer("BY", active_only=False)
        fields = russian_document("BY")

        def sealed(count: int) -> list:  # type: ignore[type-arg]
            return [
                node._seal(compose_for(node, dict(fields), []), signatory, [], "user:bench", recipient)
                for _ in range(count)
            ]

        count = 3 * args.groups * args.group
        node._store_sends(sealed(20))  # warm: caches, compiled statements
        server = backend_cpu(postgres, database) if postgres and database else (lambda: 0.0)
        alone, alone_server = cpu_per_message(node, sealed(count), 1, server_cpu=server)
        grouped, grouped_server = cpu_per_message(node, sealed(count), args.group, server_cpu=server)
        backend = "PostgreSQL" if postgres else "SQLite"
        for size, cpu, server_used in ((1, alone, alone_server), (args.group, grouped, grouped_server)):
            on_server = f" + {server_used * 1e6:4.0f} us in the server" if postgres else ""
            print(
                f"{backend} _store_sends, groups of {size:<2}: {cpu * 1e6:6.0f} us CPU per message"
                + on_server
                + (f"   ratio {grouped / alone:.2f} of groups of 1" if size > 1 else "")
            )
        if postgres:
            store = wall_per_store(node, sealed(args.groups))
            trip = wall_per_round_trip(node.engine, args.groups)
            print(
                f"{backend} _store_sends, one message: p50 {store * 1e3:.2f} ms wall-clock per store"
                f" = {store / trip:.1f} x a bare round trip (SELECT 1, p50 {trip * 1e3:.3f} ms, same run)"
            )
        if args.statements:
            group = sealed(args.group)
            statements: list[str] = []
            listen = (node.engine, "before_cursor_execute")

            def note(_conn, _cursor, statement, _params, _context, executemany):  # type: ignore[no-untyped-def]
                statements.append(("many: " if executemany else "") + " ".join(statement.split())[:160])

            event.listen(*listen, note)
            try:
                node._store_sends(group)
            finally:
                event.remove(*listen, note)
            print(f"statements for one group of {args.group}: {len(statements)}")
            for text in statements:
                print("   ", text)
        if postgres and database and args.keep_database:
            postgres.names.remove(database)
            print(f"kept database {database}")
        node.engine.dispose()


if __name__ == "__main__":
    main()

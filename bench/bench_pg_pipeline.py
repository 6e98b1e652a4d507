"""A store transaction's statements in one PostgreSQL pipeline: ``service.pg_pipeline`` against psycopg's own.

Each transaction is ``BEGIN``, ``--rows`` rows inserted with one ``executemany``
and ``COMMIT``, in a pipeline, on one connection to a temporary table. psycopg's
own pipeline sends each statement and each row in a turn of its own (a ``poll``
and a ``send``, the ``poll`` letting go of the interpreter); the buffered one
sends them together when the pipeline ends. Measured alone, and with a thread
beside it that keeps the interpreter busy (as a node's event loop and delivery
threads do), which is where the turns cost: each time the interpreter is let go,
taking it back waits up to a switch interval (the node's: 1 ms). Prints the
median and 90th percentile of each and the ratio of the medians (buffered /
psycopg's own, lower is better), all measured in the same run.

    python bench/bench_pg_pipeline.py                 # PROLINK_BENCH_POSTGRES_URL, else the test server
    python bench/bench_pg_pipeline.py --rows 8 --transactions 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import psycopg
from sqlalchemy.engine import make_url

from service.pg_pipeline import BUFFERING, buffered_pipeline

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
Pipeline = Callable[[psycopg.Connection[Any]], AbstractContextManager[Any]]


@contextmanager
def busy_thread(on: bool) -> Iterator[None]:
    """A thread that keeps the interpreter busy while the block runs (if ``on``)."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for i in range(1000):
                n += i

    thread = threading.Thread(target=spin, daemon=True) if on else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()


def transactions(conn: psycopg.Connection[Any], pipeline: Pipeline, rows: int, count: int) -> list[float]:
    """Seconds each of ``count`` transactions of ``rows`` rows took."""
    values = [(n, "x" * 64) for n in range(rows)]
    took: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        with pipeline(conn):
            conn.execute("BEGIN")
            conn.cursor().executemany("INSERT INTO bench_rows VALUES (%s, %s)", values)
            conn.execute("COMMIT")
        took.append(time.perf_counter() - start)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="rows per transaction")
    parser.add_argument("--transactions", type=int, default=300, help="transactions per measurement")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PROLINK_BENCH_POSTGRES_URL", os.environ.get("PROLINK_TEST_POSTGRES_URL", DEFAULT_URL)
        ),
    )
    args = parser.parse_args()
    if not BUFFERING:
        sys.exit("this psycopg lacks what service.pg_pipeline overrides: nothing to compare")
    sys.setswitchinterval(0.001)  # as the node sets it (Settings.thread_switch_seconds)
    libpq = make_url(args.postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(libpq, autocommit=True)
    except psycopg.OperationalError as exc:
        print(f"SKIP: no PostgreSQL at {args.postgres_url} ({exc})")
        return
    with conn:
        conn.execute("CREATE TEMP TABLE bench_rows (n integer, text text)")
        pipelines: dict[str, Pipeline] = {"psycopg": lambda c: c.pipeline(), "buffered": buffered_pipeline}
        print(
            f"PostgreSQL pipelines: BEGIN, {args.rows} rows (executemany), COMMIT; "
            f"{args.transactions} transactions each, median / p90 in ms"
        )
        for busy in (False, True):
            medians: dict[str, float] = {}
            for name, pipeline in pipelines.items():
                transactions(conn, pipeline, args.rows, 20)  # warm: prepared statements, caches
                with busy_thread(busy):
                    took = sorted(transactions(conn, pipeline, args.rows, args.transactions))
                medians[name] = statistics.median(took) * 1000
                print(
                    f"  {'with a busy thread' if busy else 'alone':20} {name:9} "
                    f"{medians[name]:6.2f} / {took[int(len(took) * 0.9)] * 1000:6.2f}"
                )
            print(
                f"  {'with a busy thread' if busy else 'alone':20} ratio buffered / psycopg "
                f"{medians['buffered'] / medians['psycopg']:.2f}"
            )


if __name__ == "__main__":
    main()

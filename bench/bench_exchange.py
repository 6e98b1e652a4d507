"""End-to-end benchmark: two real nodes exchanging 1 KiB documents, against a mutual-TLS echo server.

Measured in one run, on the same machine:

* **Baseline**: a plain FastAPI/uvicorn server on the node's HTTP stack (the
  peer API's protocol class and event loop from ``service.server``: httptools
  and uvloop where installed, else h11 and asyncio), in a child process,
  behind the node's own TLS set-up (TLS 1.3 only, client certificate required,
  ``keys.server_ssl_context`` / ``keys.client_ssl_context`` with BY's and KZ's
  real node certificates). ``--concurrency`` threads, each with its own
  keep-alive httpx client, POST a body of exactly the size of our envelopes and
  get a small JSON answer. Requests per second, p50 and p99 latency.
* **prolink**, on SQLite and then on PostgreSQL (fresh databases, dropped
  afterwards): KZ and BY set up as the CLI would (``service.demo`` helpers) and
  started as two ``prolink serve`` processes over mutual TLS. The same number
  of sender threads post Russian 1 KiB documents to KZ's user API
  (``POST /v1/messages``: signed, sealed, persisted, queued); KZ's delivery
  worker delivers them to BY, which verifies, stores and signs a receipt; KZ
  verifies and stores the receipt. A message counts when its row in KZ's
  database is ``delivered`` with a verified receipt (every receipt is checked
  again offline afterwards, from BY's public bundle alone).

  - *Throughput* (open pipeline): the senders post all messages as fast as the
    user API takes them; from the first send to the last ``delivered_at``.
  - *Latency* (closed loop, the same concurrency as the baseline): each sender
    posts one message, waits until it is delivered, posts the next. Latency is
    ``delivered_at`` (when KZ stored the verified receipt) minus the moment the
    sender began the POST. A thread reads KZ's log for the end of each delivery
    (``DeliveryLog``), so waiting adds no load on the node's API or database and
    does not inflate the figure, which comes from the database. It is also cut
    in three stages where the nodes' clocks mark it (``closed_stages``): until
    KZ sealed the message, until it reached BY, until KZ stored the receipt.
  The open pipeline's latencies are printed too, for information: there they
  measure mostly time spent queued in the outbox.

For information, the echo server also answers ``/v1/echo-durable``: the same
echo, but each body is first stored with one durable SQLite commit (WAL,
``synchronous=FULL``, as the node's), and the node's figures are printed as
ratios to it too. CPU seconds per delivered message (each node) and per echo
request are read from /proc.

Targets: throughput >= 0.3 x baseline requests/s; closed-loop p99 <= 3 x
baseline p99 (the plain echo, as the issue defines it). Everything (processes,
temporary directory, databases) is cleaned up, also on failure or Ctrl-C. Runs
in about a minute or two:

    python bench/bench_exchange.py            # both backends
    python bench/bench_exchange.py --backends sqlite --messages 200
    python bench/bench_exchange.py --profile /tmp/prof   # py-spy both nodes during throughput

PostgreSQL: ``PROLINK_BENCH_POSTGRES_URL`` (default: ``PROLINK_TEST_POSTGRES_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) names a server and a database
we may connect to in order to create and drop the benchmark's own databases.
Without a reachable server the PostgreSQL part is reported as SKIP.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DOCUMENT_BYTES = 1024
THROUGHPUT_TARGET = 0.3  # node msg/s >= 0.3 x echo req/s
P99_TARGET = 3.0  # node p99 <= 3 x echo p99
NAMES = {
    "KZ": "Генеральная прокуратура Республики Казахстан",
    "BY": "Генеральная прокуратура Республики Беларусь",
}


# --- the document --------------------------------------------------------------------------------


def russian_document(recipient: str, size: int = DOCUMENT_BYTES) -> dict[str, Any]:
    """A request whose JSON (UTF-8) is ``size`` bytes, most of it Russian prose in ``content``."""
    due = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    doc: dict[str, Any] = {
        "kind": "request",
        "recipient_party": recipient,
        "urgent": False,
        "grounds": "Уголовное дело № 2026-0451, статья 190 УК Республики Казахстан (мошенничество).",
        "purpose": "Установление владельца банковского счёта.",
        "content": "",
        "expected_execution_date": due,
        "other_information": "Нет.",
        "direction": "economic_crime",
        "form": "crime_information",
        "confidentiality": "confidential",
        "purpose_code": "criminal_investigation",
        "case_number": "2026-0451",
    }
    prose = "Просим предоставить сведения о владельце счёта и выписку операций за первое полугодие. "
    base = len(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    text = ""
    while base + len((text + "ж").encode("utf-8")) <= size:
        text += prose[len(text) % len(prose)]
    doc["content"] = text
    return doc


# --- small helpers -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_server_cpu() -> float:
    """CPU seconds used so far by this machine's PostgreSQL server processes (every process named
    ``postgres``: backends, WAL writer, checkpointer...; 0.0 where /proc is missing or no server runs here).
    A backend that exits between two readings takes its share with it, so read around a stretch in which the
    nodes' pooled connections stay open."""
    total = 0.0
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "postgres":
            total += process_cpu(int(entry.name))
    return total


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def free_port() -> int:
    from service.demo import free_port as fp

    return fp()


@dataclass
class Figures:
    label: str
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    accept_seconds: float = 0.0  # open pipeline: first send to the user API's last 201
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per server process during the run

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


# --- the echo baseline ---------------------------------------------------------------------------


def echo_server_main(server_dir: Path, client_dir: Path, port: int) -> None:
    """Run in a child process: FastAPI echo over the node's mutual TLS (server: ``server_dir``'s identity).

    On the node's HTTP stack, so the comparison measures what the node adds: the
    peer API's protocol class and the event loop ``prolink serve`` runs on.
    """
    import asyncio

    import uvicorn

    import protocol
    from keys import export_bundle, load_identity, server_ssl_context
    from service.server import http_protocols, loop_factory

    identity = load_identity(server_dir)
    bundle, fp = export_bundle(client_dir)
    client_ca = protocol.verify_bundle(bundle, expected_fingerprint=fp).bundle.tls_ca_pem
    ctx = server_ssl_context(identity, [client_ca])

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict[str, Any]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"status": "accepted", "size": size}

    # For information only (the targets are against /v1/echo): the same echo, but each body is first
    # stored with one durable SQLite commit (WAL, synchronous=FULL, as the node's), as every node must.
    import sqlite3

    db = sqlite3.connect(str(server_dir / "durable-echo.db"), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS body (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    @app.post("/v1/echo-durable")
    async def echo_durable(request: Request) -> dict[str, Any]:
        body = await request.body()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO body (data) VALUES (?)", (body,))
        db.execute("COMMIT")
        return {"status": "accepted", "size": len(body)}

    peer_http, _ = http_protocols()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=peer_http,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        ssl_context_factory=lambda _config, _default: ctx,
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(uvicorn.Server(config).serve())


@contextmanager
def echo_server(server_dir: Path, client_dir: Path, log_dir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    log = (log_dir / "echo.log").open("ab")
    command = [sys.executable, __file__, "--echo-server", str(server_dir), str(client_dir), str(port)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure_echo(
    client_dir: Path,
    server_dir: Path,
    port: int,
    body_size: int,
    concurrency: int,
    requests: int,
    server_pid: int,
    path: str = "/v1/echo",
) -> Figures:
    import protocol
    from keys import client_ssl_context, export_bundle, load_identity

    bundle, fp = export_bundle(server_dir)
    server_ca = protocol.verify_bundle(bundle, expected_fingerprint=fp).bundle.tls_ca_pem
    identity = load_identity(client_dir)
    url = f"https://127.0.0.1:{port}{path}"
    body = os.urandom(body_size)
    headers = {"content-type": "application/vnd.prolink.envelope"}

    def new_client() -> httpx.Client:
        return httpx.Client(verify=client_ssl_context(identity, server_ca), timeout=30.0)

    # Wait for the server, and make sure TLS 1.3 with a client certificate is what we get.
    deadline = time.monotonic() + 30
    with new_client() as c:
        while True:
            try:
                r = c.post(url, content=body, headers=headers)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("echo server did not come up") from None
                time.sleep(0.1)
        if r.status_code != 200 or r.json()["size"] != body_size:
            raise RuntimeError(f"echo server answered {r.status_code} {r.text[:200]}")

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        mine: list[float] = []
        with new_client() as c:
            for _ in range(20):  # warm the connection (handshake excluded, as for the node's worker)
                c.post(url, content=body, headers=headers).raise_for_status()
            barrier.wait()
            while True:
                with lock:
                    if next(counter, None) is None:
                        break
                t0 = time.perf_counter()
                r = c.post(url, content=body, headers=headers)
                r.raise_for_status()
                r.json()
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu_before, load_before = time.perf_counter(), process_cpu(server_pid), process_cpu(os.getpid())
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if len(latencies) != requests:
        raise RuntimeError(f"echo: {len(latencies)} of {requests} requests completed")
    return Figures(
        "echo",
        requests,
        elapsed,
        latencies,
        cpu={"echo": process_cpu(server_pid) - cpu_before, "load": process_cpu(os.getpid()) - load_before},
    )


# --- two nodes -------------------------------------------------------------------------------------


class Postgres:
    """Creates uniquely named databases for the benchmark and drops them all at the end."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self.url = make_url(url)
        self.admin: Any = None
        self.names: list[str] = []

    def available(self) -> str | None:
        import psycopg

        try:
            libpq = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.admin = psycopg.connect(libpq, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            return str(exc).strip().splitlines()[0]
        return None

    def create(self) -> str:
        from psycopg import sql

        name = f"prolink_bench_{secrets.token_hex(5)}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return str(
            self.url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        )

    def drop_all(self) -> None:
        from psycopg import sql

        if self.admin is None:
            return
        for name in self.names:
            try:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                self.admin.execute(drop)
            except Exception as exc:
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        self.admin.close()
        self.admin = None


@dataclass
class Pair:
    kz: Any
    by: Any
    root: Path


def make_pair(stack: ExitStack, root: Path, database_urls: dict[str, str | None]) -> Pair:
    """KZ and BY set up as the CLI would, bundles exchanged, both ``prolink serve`` processes running."""
    from service.demo import introduce, setup_party, start, stop, wait_ready

    root.mkdir(parents=True)
    kz = setup_party(root, "KZ", NAMES["KZ"], database_urls["KZ"])
    by = setup_party(root, "BY", NAMES["BY"], database_urls["BY"])
    introduce(kz, by)
    introduce(by, kz)
    for p in (kz, by):
        start(p, root)
        stack.callback(stop, p, kill=True)
    for p in (kz, by):
        wait_ready(p)
    return Pair(kz, by, root)


#: The statuses in which a message's delivery has ended, and those of them that are failures.
ENDED = frozenset({"delivered", "rejected", "parked"})
FAILED = ENDED - {"delivered"}


class Outgoing:
    """Reads a node's database directly (KZ's: delivery times of outgoing messages; BY's, for when they
    arrived: ``closed_stages``)."""

    def __init__(self, data_dir: Path) -> None:
        from service.db import make_engine
        from service.settings import Settings

        self.engine = make_engine(Settings.load(data_dir).database_url)

    def close(self) -> None:
        self.engine.dispose()

    def rows(self, ids: list[str], direction: str = "out") -> dict[str, Any]:
        """The ``message`` rows of ``ids`` (``direction="in"``: on a reading of the receiving node's database,
        its received copies of them)."""
        from sqlalchemy import select

        from service.db import session_scope
        from service.models import Message

        found: dict[str, Any] = {}
        with session_scope(self.engine, readonly=True) as s:
            for i in range(0, len(ids), 500):
                batch = ids[i : i + 500]
                query = select(
                    Message.id,
                    Message.status,
                    Message.delivered_at,
                    Message.receipt,  # type: ignore[call-overload]
                    Message.receipt_status,
                    Message.receipt_verified,
                    Message.envelope_sha256,
                    Message.created_at,
                ).where(Message.direction == direction, Message.id.in_(batch))  # type: ignore[attr-defined]
                found.update({r.id: r for r in s.execute(query)})
        return found

    def wait_all(self, ids: list[str], timeout: float) -> None:
        """Until every message in ``ids`` is delivered; raises if one ends rejected or parked. (Polls: for the
        warm-up and to confirm what ``DeliveryLog`` saw, not while a figure is being measured.)"""
        deadline = time.monotonic() + timeout
        pending = list(ids)
        while pending:
            rows = self.rows(pending)
            bad = [m for m, r in rows.items() if r.status in FAILED]
            if bad:
                raise RuntimeError(f"{len(bad)} messages ended {rows[bad[0]].status}, e.g. {bad[0]}")
            pending = [m for m in pending if m not in rows or rows[m].status != "delivered"]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {len(ids) - len(pending)} of {len(ids)} messages delivered")
            if pending:
                time.sleep(0.02)


class DeliveryLog:
    """Tails a node's log for the lines its delivery worker writes once a delivery's receipts are committed
    (``delivery_batch``, with each message's outcome by id; ``delivery_attempt`` for one envelope alone)
    and sets an event per message whose delivery ended (``expect``).

    So the load generator learns of a delivery by reading the log's new bytes every 2 ms (``every``; the
    open pipeline waits only for the last one and reads every 20 ms, as a thread that wakes 500 times a
    second makes the senders hand the GIL over more often). Polling KZ's database for it instead cost
    this process 0.46-0.65 s of CPU over 404-418 queries (1.1-1.5 ms each) in a 400-message closed loop
    here, and the database a query each time: CPU taken from the nodes on a two-core machine. The
    figures themselves come from the database (``figures_from_db``).
    """

    def __init__(self, path: Path, every: float = 0.002) -> None:
        self.path = path
        self.every = every  # seconds between reads that found nothing new
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0
        self._unreadable: list[bytes] = []  # delivery lines that did not parse (another write inside one)
        self.error: str | None = None

    def expect(self, message_id: str) -> threading.Event:
        """The event set when ``message_id``'s delivery ends; already set once the reader has failed."""
        with self._lock:
            event = self._events.setdefault(message_id, threading.Event())
            if self.error is not None:
                event.set()
            return event

    def wait_all(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for mid in ids:
            ended = self.expect(mid).wait(max(0.0, deadline - time.monotonic()))
            if self.error is not None:
                raise RuntimeError(f"the log reader failed: {self.error}")
            if not ended:
                unreadable = f"; delivery lines unread: {self._unreadable[:3]}" if self._unreadable else ""
                raise RuntimeError(f"message {mid}: its delivery did not end within {timeout} s{unreadable}")

    def __enter__(self) -> DeliveryLog:
        self._offset = self.path.stat().st_size  # only what is written from now on
        self._thread = threading.Thread(target=self._tail, daemon=True, name="delivery-log")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _tail(self) -> None:
        pending = b""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                while not self._stop.is_set():
                    data = f.read()
                    if not data:
                        time.sleep(self.every)
                        continue
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        if b'"delivery_' in line:
                            self._ended(line)
        except Exception as exc:
            with self._lock:
                self.error = f"{type(exc).__name__}: {exc}"
                for e in self._events.values():
                    e.set()

    def _ended(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self._unreadable.append(line[:200])
            return
        if event.get("event") == "delivery_batch":
            outcomes = event.get("messages") or {}
        elif event.get("event") == "delivery_attempt":
            outcomes = {event.get("message_id"): event.get("outcome")}
        else:
            return
        with self._lock:
            for mid, outcome in outcomes.items():
                if outcome in ENDED:
                    self._events.setdefault(mid, threading.Event()).set()


def post_message(client: httpx.Client, doc: dict[str, Any]) -> tuple[str, float, int]:
    """(message id, wall-clock time the POST began, envelope size)."""
    t0 = time.time()
    r = client.post("/v1/messages", json=doc)
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/messages answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    return body["id"], t0, int(body["envelope_size"])


def sender_clients(pair: Pair, concurrency: int) -> list[httpx.Client]:
    return [
        httpx.Client(
            base_url=pair.kz.api,
            timeout=60.0,
            headers={"authorization": f"Bearer {pair.kz.tokens['signatory']}"},
        )
        for _ in range(concurrency)
    ]


def post_all(
    pair: Pair,
    doc: dict[str, Any],
    concurrency: int,
    count: int,
    after_each: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """``count`` messages posted by ``concurrency`` senders; ``after_each(id)`` runs before a sender's next.

    Returns when every sender is done: message id -> wall-clock time its POST began.
    """
    clients = sender_clients(pair, concurrency)
    sent: dict[str, float] = {}
    lock = threading.Lock()
    counter = iter(range(count))

    def sender(client: httpx.Client) -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            mid, t0, _ = post_message(client, doc)
            with lock:
                sent[mid] = t0
            if after_each is not None:
                after_each(mid)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(sender, c) for c in clients]:
                f.result()
    finally:
        for c in clients:
            c.close()
    return sent


def run_open(
    pair: Pair, out: Outgoing, doc: dict[str, Any], concurrency: int, count: int, timeout: float
) -> tuple[Figures, dict[str, float]]:
    """``count`` messages posted by ``concurrency`` senders as fast as accepted; waits for every delivery."""
    pids = {"KZ": pair.kz.process.pid, "BY": pair.by.process.pid}
    pids["load"] = os.getpid()  # this process: the senders, and the reading of KZ's log
    with DeliveryLog(pair.kz.log_path, every=0.02) as log:
        cpu_before = {party: process_cpu(pid) for party, pid in pids.items()}
        database_before = postgres_server_cpu()
        sent = post_all(pair, doc, concurrency, count)
        accepted = time.time() - min(sent.values())
        log.wait_all(list(sent), timeout)
    out.wait_all(list(sent), timeout)  # (the database agrees: one read)
    figures = figures_from_db(out, "open", sent)
    figures.accept_seconds = accepted
    figures.cpu = {party: process_cpu(pid) - cpu_before[party] for party, pid in pids.items()}
    figures.cpu["database"] = postgres_server_cpu() - database_before  # PostgreSQL's share, if it runs here
    return figures, sent


def run_closed(
    pair: Pair, out: Outgoing, doc: dict[str, Any], concurrency: int, count: int, timeout: float
) -> tuple[Figures, dict[str, float]]:
    """Each sender posts one message, waits until it is delivered, then posts the next."""

    with DeliveryLog(pair.kz.log_path) as log:
        sent = post_all(pair, doc, concurrency, count, lambda mid: log.wait_all([mid], timeout))
    out.wait_all(list(sent), timeout)  # (the database agrees: one read)
    return figures_from_db(out, "closed", sent), sent


#: The closed loop's latency cut where the two nodes' clocks mark it (one machine: one clock).
STAGES = ("sent until sealed", "sealed until it reached BY", "reached BY until the receipt was stored")


def closed_stages(out: Outgoing, by_dir: Path, sent: dict[str, float]) -> dict[str, list[float]]:
    """Each closed-loop message's latency in three stages: the sender's POST until KZ sealed it (user
    API: parse, token, compose, sign, seal); until BY began checking it (KZ's store, the wait for the
    batch in flight, the claim, the request); until KZ stored BY's receipt (BY's checks, store and
    receipt, the answer, KZ's verification and settlement)."""
    by = Outgoing(by_dir)  # (its ``created_at``: the clock ``receive_batch`` read before checking the batch)
    try:
        rows, reached = out.rows(list(sent)), by.rows(list(sent), direction="in")
    finally:
        by.close()
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for mid, t0 in sent.items():
        sealed, at_by = rows[mid].created_at.timestamp(), reached[mid].created_at.timestamp()
        stored = rows[mid].delivered_at.timestamp()
        for name, seconds in zip(STAGES, (sealed - t0, at_by - sealed, stored - at_by), strict=True):
            stages[name].append(seconds)
    return stages


def figures_from_db(out: Outgoing, label: str, sent: dict[str, float]) -> Figures:
    rows = out.rows(list(sent))
    missing = [
        m for m in sent if m not in rows or rows[m].status != "delivered" or not rows[m].receipt_verified
    ]
    if missing:
        raise RuntimeError(
            f"{len(missing)} messages not delivered with a verified receipt, e.g. {missing[0]}"
        )
    latencies = [rows[m].delivered_at.timestamp() - t0 for m, t0 in sent.items()]
    first = min(sent.values())
    last = max(rows[m].delivered_at.timestamp() for m in sent)
    return Figures(label, len(sent), last - first, latencies)


def verify_receipts_offline(pair: Pair, out: Outgoing, ids: list[str]) -> int:
    """Check every stored receipt with nothing but BY's public bundle; returns how many verified."""
    import protocol
    from keys import export_bundle

    bundle, fp = export_bundle(pair.by.data_dir)
    trusted = protocol.verify_bundle(bundle, expected_fingerprint=fp)
    ok = 0
    for mid, row in out.rows(ids).items():
        result = protocol.verify_receipt(
            row.receipt,
            trusted,
            envelope_sha256=bytes.fromhex(row.envelope_sha256),
            message_id=mid,
            sender="KZ",
        )
        ok += bool(result.accepted)
    return ok


# --- profiling (optional) ----------------------------------------------------------------------------


@contextmanager
def profiling(pair: Pair, directory: Path | None, tag: str) -> Iterator[None]:
    """py-spy both node processes while the block runs (GIL-holding samples: where the CPU goes).

    Writes collapsed stacks (``{tag}-kz.txt``, ``{tag}-by.txt``; flamegraph.pl and
    speedscope read them) into ``directory`` and prints the heaviest of our own frames.
    """
    if directory is None:
        yield
        return
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("profile: py-spy not found (pip install py-spy into this environment); not profiling")
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    for p in (pair.kz, pair.by):
        out = directory / f"{tag}-{p.party.lower()}.txt"
        command = [
            pyspy,
            "record",
            "--pid",
            str(p.process.pid),
            "--rate",
            "250",
            "--gil",
            "--format",
            "raw",
            "-o",
            str(out),
        ]
        procs.append(
            (p.party, out, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        )
    time.sleep(1.0)
    try:
        yield
    finally:
        for _, _, proc in procs:
            proc.send_signal(signal.SIGINT)
        for party, out, proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if out.exists():
                print_profile(f"{tag} {party}", out)


def print_profile(label: str, path: Path, top: int = 12) -> None:
    """The frames of prolink's own code (service/, protocol/, keys/) holding the GIL most, inclusive."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            module = where.split(":")[0]
            if module.startswith(("service/", "protocol/", "keys/")) and (name, module) not in seen:
                seen.add((name, module))
                inclusive[f"{name} ({module})"] = inclusive.get(f"{name} ({module})", 0) + int(count)
    print(f"profile {label}: {total} samples holding the GIL ({path})")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / max(total, 1):5.1f}%  {frame}")


# --- one backend --------------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    envelope_size: int
    open: Figures
    closed: Figures
    receipts_verified: int
    closed_stages: dict[str, list[float]] = field(default_factory=dict)  # ``closed_stages``


def bench_backend(
    backend: str,
    root: Path,
    database_urls: dict[str, str | None],
    args: argparse.Namespace,
    baseline_hook: Callable[[Pair, int], None] | None = None,
) -> BackendResult:
    with ExitStack() as stack:
        pair = make_pair(stack, root, database_urls)
        out = Outgoing(pair.kz.data_dir)
        stack.callback(out.close)
        doc = russian_document("BY")
        # Warm-up: connections, caches, the first TLS handshake between the nodes.
        with httpx.Client(
            base_url=pair.kz.api,
            timeout=60.0,
            headers={"authorization": f"Bearer {pair.kz.tokens['signatory']}"},
        ) as c:
            warm = [post_message(c, doc) for _ in range(10)]
        envelope_size = warm[0][2]
        out.wait_all([w[0] for w in warm], 60)
        if baseline_hook is not None:
            baseline_hook(pair, envelope_size)
        with profiling(pair, args.profile, f"{backend}-open"):
            opened, sent_open = run_open(pair, out, doc, args.concurrency, args.messages, timeout=120)
        closed, sent_closed = run_closed(pair, out, doc, args.concurrency, args.latency_messages, timeout=60)
        ids = list(sent_open) + list(sent_closed)
        verified = verify_receipts_offline(pair, out, ids)
        if verified != len(ids):
            raise RuntimeError(f"only {verified} of {len(ids)} receipts verified offline")
        return BackendResult(
            backend,
            envelope_size,
            opened,
            closed,
            verified,
            closed_stages(out, pair.by.data_dir, sent_closed),
        )


# --- report ---------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(base: Figures, r: BackendResult, durable: Figures | None = None) -> dict[str, Any]:
    tp_ratio = r.open.rate / base.rate
    p50_ratio = r.closed.p50 / base.p50
    p99_ratio = r.closed.p99 / base.p99
    tp_ok, p99_ok = tp_ratio >= THROUGHPUT_TARGET, p99_ratio <= P99_TARGET
    b = f"{r.backend:<9}"
    print(
        f"{b} throughput  {r.open.count} messages delivered in {r.open.seconds:.2f} s ="
        f" {r.open.rate:7.1f} msg/s"
        f"   ratio {tp_ratio:.3f}   target >= {THROUGHPUT_TARGET}   {verdict(tp_ok)}"
    )
    print(
        f"{b} latency     closed loop, {r.closed.count} messages: p50 {ms(r.closed.p50)} (x{p50_ratio:.1f})"
        f"   p99 {ms(r.closed.p99)} (x{p99_ratio:.1f})   target p99 <= {P99_TARGET:g}x   {verdict(p99_ok)}"
    )
    if r.closed_stages:
        print(
            f"{b} (info)      closed loop, where the time went (p50 / p99): "
            + ";  ".join(
                f"{name} {ms(percentile(v, 50))} / {ms(percentile(v, 99))}"
                for name, v in r.closed_stages.items()
            )
        )
    accepted = r.open.count / r.open.accept_seconds
    per_message = {name: 1000 * seconds / r.open.count for name, seconds in r.open.cpu.items()}
    node_cpu = {party: per_message.get(party, 0.0) for party in ("KZ", "BY")}
    echo_cpu = 1000 * base.cpu.get("echo", 0.0) / base.count
    print(
        f"{b} (info)      CPU per delivered message: KZ {node_cpu['KZ']:.2f} ms + BY "
        f"{node_cpu['BY']:.2f} ms (both nodes {sum(node_cpu.values()):.2f} ms) against "
        f"{echo_cpu:.2f} ms per request in the echo server"
        f" (x{sum(node_cpu.values()) / max(echo_cpu, 1e-9):.1f})"
    )
    # Where the machine's CPU went, per message: what bounds the open pipeline when every core is busy.
    database = per_message.get("database", 0.0)
    everything = sum(node_cpu.values()) + database + per_message.get("load", 0.0)
    echo_everything = echo_cpu + 1000 * base.cpu.get("load", 0.0) / base.count
    print(
        f"{b} (info)      CPU of the whole run per message: nodes {sum(node_cpu.values()):.2f} ms"
        f" + PostgreSQL server {database:.2f} ms + load generator {per_message.get('load', 0.0):.2f} ms"
        f" = {everything:.2f} ms; echo: server + load generator {echo_everything:.2f} ms per request"
    )
    if durable is not None:
        print(
            f"{b} (info)      against the durable echo: throughput ratio {r.open.rate / durable.rate:.3f},"
            f" closed-loop p99 x{r.closed.p99 / durable.p99:.1f}"
        )
    print(
        f"{b} (info)      open pipeline: user API accepted {accepted:.1f} msg/s,"
        f" latency p50 {ms(r.open.p50)} p99 {ms(r.open.p99)} (time queued in the outbox);"
        f" closed loop {r.closed.rate:.1f} msg/s; receipts verified offline {r.receipts_verified}"
    )
    return {
        "backend": r.backend,
        "msgs_per_s": round(r.open.rate, 1),
        "throughput_ratio": round(tp_ratio, 3),
        "p50_ms": round(r.closed.p50 * 1000, 1),
        "p99_ms": round(r.closed.p99 * 1000, 1),
        "p99_ratio": round(p99_ratio, 2),
        "throughput_pass": tp_ok,
        "p99_pass": p99_ok,
        "open_p50_ms": round(r.open.p50 * 1000, 1),
        "open_p99_ms": round(r.open.p99 * 1000, 1),
        "accepted_msgs_per_s": round(r.open.count / r.open.accept_seconds, 1),
        "receipts_verified": r.receipts_verified,
        "cpu_ms_per_message": {name: round(v, 2) for name, v in per_message.items()},
        "echo_cpu_ms_per_request": round(echo_cpu, 2),
        "closed_stages_p50_ms": {
            name: round(percentile(v, 50) * 1000, 1) for name, v in r.closed_stages.items()
        },
        "durable_echo_throughput_ratio": round(r.open.rate / durable.rate, 3) if durable else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Each phase runs for a few seconds: runs of one or two seconds swung by a third on this shared machine.
    parser.add_argument("--messages", type=int, default=1000, help="messages per backend, open pipeline")
    parser.add_argument("--latency-messages", type=int, default=400, help="messages per backend, closed loop")
    parser.add_argument("--echo-requests", type=int, default=2000, help="requests to the echo baseline")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent senders (and echo clients)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PROLINK_BENCH_POSTGRES_URL", os.environ.get("PROLINK_TEST_POSTGRES_URL", DEFAULT_PG_URL)
        ),
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory for py-spy profiles of both nodes during the throughput phase",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgres") for b in backends):
        parser.error("--backends takes sqlite and/or postgres")

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the finally blocks clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="prolink-bench-"))
    pg = Postgres(args.postgres_url)
    summary: dict[str, Any] = {"ok": False, "backends": []}
    baseline: dict[str, Figures] = {}
    failed = False
    print(
        f"prolink exchange benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{args.concurrency} concurrent senders, {DOCUMENT_BYTES} B Russian documents",
        flush=True,
    )

    def measure_baseline(pair: Pair, envelope_size: int) -> None:
        # Reuses this pair's real node certificates: BY's serves, KZ's is the client certificate.
        with echo_server(pair.by.data_dir, pair.kz.data_dir, root) as (port, pid):
            base = measure_echo(
                pair.kz.data_dir,
                pair.by.data_dir,
                port,
                envelope_size,
                args.concurrency,
                args.echo_requests,
                pid,
            )
            durable = measure_echo(
                pair.kz.data_dir,
                pair.by.data_dir,
                port,
                envelope_size,
                args.concurrency,
                args.echo_requests,
                pid,
                path="/v1/echo-durable",
            )
        baseline["echo"], baseline["durable"] = base, durable
        print(
            f"baseline  echo        FastAPI/uvicorn, mutual TLS 1.3, httpx, POST {envelope_size} B"
            f" (= one envelope): {base.count} requests in {base.seconds:.2f} s = {base.rate:7.1f} req/s"
            f"   p50 {ms(base.p50)}   p99 {ms(base.p99)}",
            flush=True,
        )
        print(
            f"(info)    durable echo  the same, each body stored with one durable SQLite commit:"
            f" {durable.rate:7.1f} req/s   p50 {ms(durable.p50)}   p99 {ms(durable.p99)}",
            flush=True,
        )

    try:
        for backend in backends:
            urls: dict[str, str | None] = {"KZ": None, "BY": None}
            if backend == "postgres":
                why = pg.available() if pg.admin is None else None
                if why is not None:
                    print(f"postgres  SKIP: PostgreSQL unreachable ({why})", flush=True)
                    continue
                urls = {"KZ": pg.create(), "BY": pg.create()}
            try:
                result = bench_backend(
                    backend, root / backend, urls, args, measure_baseline if not baseline else None
                )
            except Exception as exc:
                failed = True
                print(f"{backend:<9} ERROR: {type(exc).__name__}: {exc}", flush=True)
                for log in sorted((root / backend).glob("*.log")):
                    print(f"--- {log.name} (last lines) ---")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-10:]))
                continue
            summary["backends"].append(report(baseline["echo"], result, baseline.get("durable")))
    except KeyboardInterrupt:
        failed = True
        print("interrupted", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}" + "".join(f", database {name}" for name in pg.names))
            pg.names.clear()  # (``drop_all`` drops what is named there)
        else:
            shutil.rmtree(root, ignore_errors=True)
        pg.drop_all()

    if "echo" in baseline:
        base = baseline["echo"]
        summary["baseline"] = {
            "req_per_s": round(base.rate, 1),
            "p50_ms": round(base.p50 * 1000, 1),
            "p99_ms": round(base.p99 * 1000, 1),
        }
        if "durable" in baseline:
            summary["durable_echo"] = {
                "req_per_s": round(baseline["durable"].rate, 1),
                "p99_ms": round(baseline["durable"].p99 * 1000, 1),
            }
    results = summary["backends"]
    summary["ok"] = (
        not failed and bool(results) and all(r["throughput_pass"] and r["p99_pass"] for r in results)
    )
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--echo-server":
        echo_server_main(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())

"""CPU per request of one node's user API, against its own cheapest route measured in the same run.

One real ``prolink serve`` process (SQLite, or PostgreSQL with ``--postgres``)
whose only peer is suspended, so messages are stored and queued but never
delivered: what is measured is the API and the send path alone, without the
delivery worker. ``--concurrency`` threads, each with its own keep-alive
client, run each route in turn:

* ``GET /healthz``: no token, no database (the baseline);
* ``GET /v1/messages/out/{unknown}``: token check and one read, answered 404;
* ``POST /v1/messages``: token check, compose, sign, seal, store and queue a 1 KiB
  Russian document.

Printed: requests per second and the node process's CPU per request (from
/proc), and each route's CPU as a multiple of the baseline's. Each route runs
``--rounds`` times; the best round counts (this machine is shared and noisy).

    python bench/bench_user_api.py
    python bench/bench_user_api.py --postgres --requests 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_exchange import DEFAULT_PG_URL, Postgres, process_cpu, russian_document  # noqa: E402
from service import demo  # noqa: E402


def measure(
    pid: int, clients: list[httpx.Client], call: Callable[[httpx.Client], Any], requests: int
) -> tuple[float, float]:
    """(requests per second, CPU seconds of ``pid`` per request) for ``requests`` calls over ``clients``."""
    for c in clients:
        call(c)  # warm: connections, caches
    per_client = requests // len(clients)
    errors: list[BaseException] = []

    def run(c: httpx.Client) -> None:
        try:
            for _ in range(per_client):
                call(c)
        except BaseException as exc:  # reported below
            errors.append(exc)

    cpu0, t0 = process_cpu(pid), time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, cpu = time.monotonic() - t0, process_cpu(pid) - cpu0
    if errors:
        raise errors[0]
    done = per_client * len(clients)
    return done / seconds, cpu / done


def expect(status: int) -> Callable[[httpx.Response], httpx.Response]:
    def check(response: httpx.Response) -> httpx.Response:
        if response.status_code != status:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code}: {response.text[:200]}"
            )
        return response

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per route and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PROLINK_BENCH_POSTGRES_URL", os.environ.get("PROLINK_TEST_POSTGRES_URL", DEFAULT_PG_URL)
        ),
    )
    args = parser.parse_args()

    pg = Postgres(args.postgres_url) if args.postgres else None
    if pg is not None and (why := pg.available()) is not None:
        print(f"postgres  SKIP: PostgreSQL unreachable ({why})")
        return 1
    with tempfile.TemporaryDirectory(prefix="prolink-api-bench-") as tmp:
        root = Path(tmp)
        try:
            url = pg.create() if pg is not None else None
            kz = demo.setup_party(root, "KZ", "Генеральная прокуратура Республики Казахстан", url)
            by = demo.setup_party(root, "BY", "Генеральная прокуратура Республики Беларусь")
            demo.introduce(kz, by)
            demo.start(kz, root)
            demo.wait_ready(kz)
            try:
                assert kz.process is not None
                with kz.client("operator") as c:  # messages to BY are held: nothing is delivered
                    expect(200)(c.post("/v1/admin/peers/BY/suspend", json={"reason": "benchmark"}))
                doc = russian_document("BY")
                routes: list[tuple[str, Callable[[httpx.Client], Any]]] = [
                    ("GET /healthz", lambda c: expect(200)(c.get("/healthz"))),
                    ("GET /v1/messages/out/{unknown}", lambda c: expect(404)(c.get("/v1/messages/out/none"))),
                    ("POST /v1/messages", lambda c: expect(201)(c.post("/v1/messages", json=doc))),
                ]
                clients = [kz.client("signatory") for _ in range(args.concurrency)]
                best: dict[str, tuple[float, float]] = {}
                for _ in range(args.rounds):
                    for name, call in routes:
                        rate, cpu = measure(kz.process.pid, clients, call, args.requests)
                        if name not in best or cpu < best[name][1]:
                            best[name] = (rate, cpu)
                for c in clients:
                    c.close()
            finally:
                demo.stop(kz)
        finally:
            if pg is not None:
                pg.drop_all()
    backend = "postgres" if args.postgres else "sqlite"
    base_cpu = best["GET /healthz"][1]
    print(
        f"user API, {backend}, {args.concurrency} concurrent clients, best of {args.rounds} rounds "
        f"of {args.requests} requests:"
    )
    for name, (rate, cpu) in best.items():
        print(
            f"  {name:32s} {rate:7.0f} req/s   node CPU {cpu * 1000:5.2f} ms per request"
            f"   x{cpu / base_cpu:5.2f} of /healthz"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

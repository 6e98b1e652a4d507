"""Per-message cost of the send path: in-process ``Node.send``, and ``POST /v1/messages`` over HTTP.

    python bench/bench_send.py -n 300                 # in-process: wall and CPU ms per message
    python bench/bench_send.py -n 300 --profile --sort tottime
    python bench/bench_send.py -n 300 --http          # KZ alone (BY down; retries pushed an hour out)
    python bench/bench_send.py -n 300 --http --with-peer

Over HTTP the node's CPU (its whole process: API, delivery worker, key sync) is read from /proc,
and that of its main thread alone, which runs the event loop: the HTTP serving layer's share.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx
from sqlalchemy import select

from bench.bench_exchange import russian_document
from service import demo
from service.db import session_scope
from service.logging import configure_logging
from service.models import User
from service.server import build_node
from service.user_api import compose_for


def _cpu(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process, or of one of its threads (Linux)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    configure_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--http", action="store_true")
    ap.add_argument("--sort", default="cumulative")
    ap.add_argument(
        "--with-peer", action="store_true", help="start BY too (its deliveries then share the CPU)"
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kz = demo.setup_party(root, "KZ", "Kaz")
        by = demo.setup_party(root, "BY", "Bel")
        demo.introduce(kz, by)
        demo.introduce(by, kz)
        fields = russian_document("BY")
        if not a.http:
            node = build_node(kz.data_dir)
            with session_scope(node.engine, readonly=True) as s:
                key_id = s.execute(
                    select(User.signatory_key_id).where(User.signatory_key_id.is_not(None))
                ).scalar_one()
            sig = node.signatory(key_id)

            def one() -> None:
                node.send(compose_for(node, dict(fields), []), sig, [], actor="user:1")

            for _ in range(20):
                one()
            if a.profile:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(a.n):
                    one()
                pr.disable()
                pstats.Stats(pr).sort_stats(a.sort).print_stats(45)
            t = time.perf_counter()
            c = time.process_time()
            for _ in range(a.n):
                one()
            wall = (time.perf_counter() - t) / a.n * 1000
            cpu = (time.process_time() - c) / a.n * 1000
            print(f"in-process Node.send: {wall:.2f} ms wall, {cpu:.2f} ms CPU per message (n={a.n})")
        else:
            # Without BY each message is tried once, then waits an hour: the worker stays out of the figure.
            demo.start(
                kz,
                root,
                env=None
                if a.with_peer
                else {
                    "PROLINK_DELIVERY_BACKOFF_BASE_SECONDS": "3600",
                    "PROLINK_DELIVERY_BACKOFF_MAX_SECONDS": "3600",
                },
            )
            if a.with_peer:
                demo.start(by, root)
            try:
                demo.wait_ready(kz)
                if a.with_peer:
                    demo.wait_ready(by)
                with httpx.Client(timeout=30) as h:
                    hdr = {"authorization": f"Bearer {kz.tokens['signatory']}"}
                    for _ in range(20):
                        h.get(kz.api + "/healthz")
                    t = time.perf_counter()
                    for _ in range(a.n):
                        h.get(kz.api + "/healthz")
                    print(f"GET /healthz: {(time.perf_counter() - t) / a.n * 1000:.2f} ms per request")
                    for _ in range(20):
                        h.post(kz.api + "/v1/messages", json=fields, headers=hdr).raise_for_status()
                    t = time.perf_counter()
                    pid = kz.process.pid
                    c, c_loop = _cpu(pid), _cpu(pid, pid)
                    for _ in range(a.n):
                        h.post(kz.api + "/v1/messages", json=fields, headers=hdr).raise_for_status()
                    wall = (time.perf_counter() - t) / a.n * 1000
                    cpu = (_cpu(pid) - c) / a.n * 1000
                    # The main thread runs the event loop: HTTP parsing, routing, dependencies, responses.
                    cpu_loop = (_cpu(pid, pid) - c_loop) / a.n * 1000
                    print(
                        f"POST /v1/messages: {wall:.2f} ms wall, {cpu:.2f} ms node CPU per request"
                        f" (event-loop thread {cpu_loop:.2f} ms) (n={a.n})"
                    )
            finally:
                demo.stop(kz, kill=True)
                demo.stop(by, kill=True)


main()

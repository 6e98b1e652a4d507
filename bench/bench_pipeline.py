"""CPU per message of the node's core path, in one process, without HTTP: send, claim, receive, settle.

KZ signs, seals and queues ``--batch`` messages (``Node.send``); its worker's
claim takes them (``outbox.claim_due`` and ``small_blobs``); BY checks and
stores them as one batch (``Node.receive_batch``); KZ verifies the receipts and
marks the messages delivered (``DeliveryWorker._settle``). Both nodes use real
databases (SQLite files by default, or fresh PostgreSQL databases) and real
keys, exactly as ``prolink serve`` would; only the HTTP hops are left out, so
what this measures is the storage, crypto and bookkeeping per message. CPU is
this process's (``time.process_time``), so a busy machine changes it less than
wall time.

    python bench/bench_pipeline.py 2>/dev/null      # SQLite, batches of 8 (the nodes log to stderr)
    python bench/bench_pipeline.py --batch 1        # one envelope per delivery
    python bench/bench_pipeline.py --senders 8      # each batch sent by 8 threads at once
    python bench/bench_pipeline.py --postgres       # PROLINK_BENCH_POSTGRES_URL, else the test server
    python bench/bench_pipeline.py --profile        # cProfile of the measured part, by own time
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import select

from bench.bench_exchange import russian_document
from service import demo, outbox
from service.blobs import small_blobs
from service.db import session_scope
from service.logging import configure_logging
from service.models import User
from service.server import build_node
from service.user_api import compose_for
from service.worker import DeliveryWorker

STEPS = ("send", "claim", "receive", "settle")


@contextmanager
def postgres_databases(server_url: str, parties: list[str]) -> Iterator[dict[str, str]]:
    """A fresh database per Party on ``server_url``'s server, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    names = {p: f"prolink_pipeline_{p.lower()}_{secrets.token_hex(4)}" for p in parties}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {p: url.set(database=name).render_as_string(hide_password=False) for p, name in names.items()}
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(root: Path, urls: dict[str, str | None], args: argparse.Namespace) -> dict[str, float]:
    kz_party = demo.setup_party(root, "KZ", "Kaz", urls["KZ"])
    by_party = demo.setup_party(root, "BY", "Bel", urls["BY"])
    demo.introduce(kz_party, by_party)
    demo.introduce(by_party, kz_party)
    kz, by = build_node(kz_party.data_dir), build_node(by_party.data_dir)
    with session_scope(kz.engine, readonly=True) as s:
        key_id = s.execute(
            select(User.signatory_key_id).where(User.signatory_key_id.is_not(None))
        ).scalar_one()  # type: ignore[union-attr]
    signatory = kz.signatory(key_id)
    fields = russian_document("BY")
    worker = DeliveryWorker(kz)
    senders = ThreadPoolExecutor(args.senders) if args.senders > 1 else None
    spent = dict.fromkeys(STEPS, 0.0)

    def rounds(messages: int) -> None:
        for _ in range(0, messages, args.batch):
            t0 = time.process_time()
            if senders is None:
                for _ in range(args.batch):
                    kz.send(compose_for(kz, dict(fields), []), signatory, [], actor="user:bench")
            else:  # as concurrent API requests would: sends that arrive together share a transaction
                list(
                    senders.map(
                        lambda _: kz.send(
                            compose_for(kz, dict(fields), []), signatory, [], actor="user:bench"
                        ),
                        range(args.batch),
                    )
                )
            t1 = time.process_time()
            claims = outbox.claim_due(kz.engine, "bench", kz.clock(), args.batch, 60).claims
            envelopes = [
                bytes(b)
                for b in small_blobs(
                    kz.engine, [c.blob_id for c in claims], max_total=kz.settings.batch_max_bytes
                )
            ]
            t2 = time.process_time()
            answers = by.receive_batch(envelopes, "KZ")
            t3 = time.process_time()
            outcomes = worker._settle(claims, [(a.status, a.body) for a in answers])
            t4 = time.process_time()
            if outcomes != ["delivered"] * len(claims):
                raise RuntimeError(f"not all delivered: {outcomes}")
            for step, (start, end) in zip(STEPS, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
                spent[step] += end - start

    try:
        rounds(8 * args.batch)  # warm up: caches, prepared statements, first pages
        spent.update(dict.fromkeys(STEPS, 0.0))
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        rounds(args.messages)
        if profile is not None:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(35)
    finally:
        worker.close()
        if senders is not None:
            senders.shutdown()
        kz.engine.dispose()
        by.engine.dispose()
    return {step: seconds / args.messages * 1000 for step, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8, help="envelopes per delivery")
    parser.add_argument(
        "--senders",
        type=int,
        default=1,
        help="threads sending each batch's messages at once (1: one after another)",
    )
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    args.messages -= args.messages % args.batch
    configure_logging()  # the node's own log lines are part of its cost; they go to stderr
    server = os.environ.get("PROLINK_BENCH_POSTGRES_URL") or os.environ.get(
        "PROLINK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_databases(server, ["KZ", "BY"]) if args.postgres else _no_databases() as urls,
    ):
        per_message = run(Path(tmp), urls, args)
    backend = "postgres" if args.postgres else "sqlite"
    steps = "   ".join(f"{step} {ms:.2f}" for step, ms in per_message.items())
    print(
        f"{backend}, batches of {args.batch}, {args.messages} messages: CPU ms per message: {steps}   "
        f"total {sum(per_message.values()):.2f}"
    )


@contextmanager
def _no_databases() -> Iterator[dict[str, str | None]]:
    yield {"KZ": None, "BY": None}


if __name__ == "__main__":
    main()

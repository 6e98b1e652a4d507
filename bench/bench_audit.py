"""Benchmark of the audit log against plain SHA-256 of the same bytes, measured in the same run.

1. Appending N entries (default 1,000,000; realistic ~300-byte entries: ids,
   envelope hash, purpose code):
   * tree only: leaf hash + compact-range update over entries already encoded
     (what the Merkle structure costs);
   * encode + tree: canonical JSON of each entry, then the above;
   * into the database (SQLite by default): ``audit.append_rows``, 1,000 entries
     per transaction, which also writes every completed perfect subtree.
   Each as a rate and as a ratio of hashing each entry's bytes once with SHA-256.
2. Verifying an export of those N entries: the real export (``prolink audit
   export``'s code path, streamed to a file) and the real offline verifier
   (``prolink audit verify``'s code path, with the bundle), against reading the
   same file in the same blocks and hashing each entry line with SHA-256.
   Target: ratio >= 0.3.
3. Proof sizes at N: inclusion and consistency proofs (hashes and bytes) and the
   time to produce one from the database (O(log N) row reads).
4. Exchange throughput with the audit log on and off: two in-process nodes; BY
   receives envelopes sealed by KZ (``Node.receive``: verify, decrypt, store the
   envelope, message row and receipt, two audit events, commit). "Off" replaces
   the log's append with what the node did before it existed (insert the event
   row, no lock, no hashing, no tree rows). The modes alternate message by
   message, so both see the same machine load; throughput (total time) and
   median per-message time are compared, and the time spent inside the append
   itself is measured in the transaction. Target: on/off >= 0.9.

Run: ``python bench/bench_audit.py`` (about 2-3 minutes; ``--entries 100000``
for a quick run; ``--postgres URL`` to also run parts 1 (database) and 4 on
PostgreSQL, in fresh databases created and dropped on that server).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import protocol  # noqa: E402
from protocol import CompactRange, entry_bytes  # noqa: E402

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
VERIFY_TARGET = 0.3
EXCHANGE_TARGET = 0.9


def sample_entry(i: int) -> dict[str, Any]:
    """One realistic event: what ``record_event`` stores for a received message."""
    return {
        "at": T0 + timedelta(microseconds=i * 1000),
        "actor": "node" if i % 3 else f"user:{i % 50}",
        "party": "BY",
        "type": ("message.received", "receipt.issued", "message.read")[i % 3],
        "object_id": f"{i:08x}-8a38-4c55-9d36-2b6c1f0e9a01",
        "outcome": "accepted",
        "detail": {
            "envelope_sha256": hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
            "kind": "request",
            "purpose_code": "criminal_case",
            "case_number": f"2026-{i % 10000:04d}",
        },
    }


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:12,.0f} /s"


# --- 1. appending ---------------------------------------------------------------------------


def bench_append(n: int) -> tuple[list[bytes], dict[str, float]]:
    print(f"1. Appending {n:,} entries")
    fields = [sample_entry(i) for i in range(n)]
    t = time.perf_counter()
    encoded = [entry_bytes(seq=i, **f) for i, f in enumerate(fields)]
    encode = time.perf_counter() - t
    size = sum(map(len, encoded))
    print(f"  entries: {size / n:.0f} bytes on average, {size / 1e6:.0f} MB in all")

    sha = hashlib.sha256
    results: dict[str, float] = {}
    raw = tree = float("inf")
    for _ in range(3):  # interleaved, best of three
        t = time.perf_counter()
        for e in encoded:
            sha(e).digest()
        raw = min(raw, time.perf_counter() - t)
        t = time.perf_counter()
        cr = CompactRange()
        for e in encoded:
            cr.append(sha(b"\x00" + e).digest())
        tree = min(tree, time.perf_counter() - t)
    results.update(raw=raw, tree=tree, encode_tree=encode + tree)
    print(f"  {'':<44} {'rate':>15} {'vs raw SHA-256':>15}")
    print(f"  {'raw SHA-256 of each entry':<44} {rate(n, raw)}")
    print(f"  {'tree only (leaf hash + compact range)':<44} {rate(n, tree)} {raw / tree:15.2f}")
    print(f"  {'canonical JSON + tree':<44} {rate(n, encode + tree)} {raw / (encode + tree):15.2f}")
    return encoded, results


def bench_db_append(n: int, url: str, label: str, raw: float) -> float:
    from service import audit
    from service.db import make_engine
    from service.migrate import upgrade

    upgrade(url)
    engine = make_engine(url)
    batch = 1000
    t = time.perf_counter()
    for start in range(0, n, batch):
        rows = [audit.NewEntry(**sample_entry(i)) for i in range(start, min(start + batch, n))]
        with engine.begin() as conn:
            audit.append_rows(conn, rows)
    seconds = time.perf_counter() - t
    engine.dispose()
    print(f"  {'into ' + label + ' (1,000 per transaction)':<44} {rate(n, seconds)} {raw / seconds:15.3f}")
    return seconds


# --- 2. verification ---------------------------------------------------------------------------


def bench_verify(node: Any, n: int, tmp: Path) -> float:
    from service.audit_export import READ_BLOCK, export_to, load_bundle, verify_file

    print(f"2. Verifying an export of {n:,} entries offline")
    path = tmp / "audit.jsonl"
    t = time.perf_counter()
    with path.open("wb") as out:
        plan = export_to(node, out, actor="bench")
    exported = time.perf_counter() - t
    bundle_path = tmp / "KZ.json"
    bundle_path.write_bytes(node.identity.bundle_bytes())
    bundles = {"KZ": load_bundle(bundle_path)}
    mb = path.stat().st_size / 1e6
    print(
        f"  export: {plan.count:,} entries, {mb:.0f} MB in {exported:.1f} s "
        f"({rate(plan.count, exported).strip()})"
    )

    def raw_pass() -> None:
        sha = hashlib.sha256
        tail = b""
        with path.open("rb") as f:
            while block := f.read(READ_BLOCK):
                data = tail + block
                cut = data.rfind(b"\n")
                tail = data[cut + 1 :]
                for line in data[:cut].split(b"\n"):
                    if not line.startswith(b'{"record":'):
                        sha(line).digest()

    def whole_file() -> None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(READ_BLOCK):
                h.update(block)

    raw = ours = whole = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        raw_pass()
        raw = min(raw, time.perf_counter() - t)
        t = time.perf_counter()
        report = verify_file(path, bundles)
        ours = min(ours, time.perf_counter() - t)
        t = time.perf_counter()
        whole_file()
        whole = min(whole, time.perf_counter() - t)
    assert report.count == plan.count
    print(f"  {'':<44} {'rate':>15} {'vs raw SHA-256':>15}")
    print(f"  {'read + SHA-256 of each entry line (raw)':<44} {rate(plan.count, raw)}")
    print(
        f"  {'prolink audit verify':<44} {rate(plan.count, ours)} {raw / ours:15.2f}"
        f"   (target >= {VERIFY_TARGET})"
    )
    print(
        f"  for information: one SHA-256 over the whole file runs at {mb / whole:.0f} MB/s; verify at "
        f"{mb / ours:.0f} MB/s"
    )
    return raw / ours


# --- 3. proof sizes ------------------------------------------------------------------------------


def bench_proofs(node: Any, n: int) -> None:
    from service import audit

    print(f"3. Proofs at {n:,} entries (RFC 9162; 32-byte hashes)")
    with node.engine.connect() as conn:
        size = audit.size(conn)
        cases = [
            ("inclusion of entry 0", lambda: audit.inclusion(conn, 0, size)),
            (f"inclusion of entry {size // 2:,}", lambda: audit.inclusion(conn, size // 2, size)),
            (f"inclusion of entry {size - 1:,}", lambda: audit.inclusion(conn, size - 1, size)),
            (f"consistency {size // 3:,} -> {size:,}", lambda: audit.consistency(conn, size // 3, size)),
            (f"consistency {size - 1000:,} -> {size:,}", lambda: audit.consistency(conn, size - 1000, size)),
            (f"root at {size - 12345:,}", lambda: [audit.root_at(conn, size - 12345)]),
        ]
        for name, fn in cases:
            proof = fn()
            t = time.perf_counter()
            for _ in range(20):
                fn()
            ms = (time.perf_counter() - t) / 20 * 1000
            print(
                f"  {name:<36} {len(proof):3d} hashes {32 * len(proof):5d} bytes"
                f"   {ms:6.2f} ms from the database"
            )


# --- 4. exchange with the log on and off ----------------------------------------------------------


def _parties(root: Path, urls: dict[str, str | None]) -> tuple[Any, Any, Any]:
    from service.demo import introduce, setup_party
    from service.server import build_node

    kz = setup_party(root, "KZ", "KZ", urls["KZ"], backdate=timedelta(days=1))
    by = setup_party(root, "BY", "BY", urls["BY"], backdate=timedelta(days=1))
    introduce(kz, by)
    introduce(by, kz)
    return kz, by, build_node(by.data_dir)


def _envelopes(kz: Any, by: Any, count: int) -> Iterator[bytes]:
    from keys import export_bundle, list_signatories, load_identity, load_signatory

    identity = load_identity(kz.data_dir)
    signatory = load_signatory(kz.data_dir, list_signatories(kz.data_dir)[0].key.key_id)
    bundle, fp = export_bundle(by.data_dir)
    recipient = protocol.verify_bundle(bundle, expected_fingerprint=fp)
    now = datetime.now(UTC)
    for _ in range(count):
        mid = str(__import__("uuid").uuid4())
        doc = protocol.parse_document(
            {
                "kind": "request",
                "urgent": False,
                "grounds": "Уголовное дело № 2026-0451.",
                "purpose": "Установление владельца банковского счёта.",
                "content": "Просим предоставить сведения.",
                "other_information": "Нет.",
                "direction": "economic_crime",
                "form": "crime_information",
                "confidentiality": "confidential",
                "recipient_party": "BY",
                "id": mid,
                "thread_id": mid,
                "sender_party": "KZ",
                "requesting_party": "KZ",
                "requested_party": "BY",
                "created_at": now.isoformat(),
                "language": "ru",
                "expected_execution_date": (now.date() + timedelta(days=30)).isoformat(),
            }
        )
        signed = protocol.sign_document(doc, signatory.key)
        yield protocol.seal(signed, signatory.authorisation, [], identity.node_keys, recipient, now)


_OFF_SEQ = itertools.count(10**12)  # "off" rows need some unique seq; far above the real log's


def _audit_off() -> Callable[[], None]:
    """Replace the log's append by a plain event insert (what the node did before); returns the undo."""
    import service.audit as audit_module

    original = audit_module.append_pending
    counter = _OFF_SEQ

    def plain(session: Any) -> None:
        from service.models import Event

        for obj in session.new:
            if isinstance(obj, Event) and obj.seq is None:
                obj.seq, obj.entry, obj.leaf_hash = next(counter), b"", b""

    audit_module.append_pending = plain

    def undo() -> None:
        audit_module.append_pending = original

    return undo


def bench_exchange(label: str, urls: dict[str, str | None], count: int) -> float:
    """Receive ``count`` envelopes with the log on and ``count`` with it off, alternating message by message.

    Alternating each message (rather than in batches) pairs the two modes under the same machine load.
    Also reports the time spent inside the log's append itself, measured in the receive transaction.
    """
    import service.audit as audit_module

    original = audit_module.append_pending
    spent = [0.0, 0]

    def timed(session: Any) -> None:
        t = time.perf_counter()
        original(session)
        spent[0] += time.perf_counter() - t
        spent[1] += 1

    with tempfile.TemporaryDirectory(prefix="prolink-bench-audit-") as tmp:
        kz, by, node = _parties(Path(tmp), urls)
        envelopes = list(_envelopes(kz, by, 2 * count + 30))
        for env in envelopes[:30]:  # warm up caches and the database
            assert node.receive(io.BytesIO(env), "KZ").status == 200
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i, env in enumerate(envelopes[30:]):
            mode = "on" if (i // 2 + i) % 2 == 0 else "off"  # on, off, off, on, on, off, ...
            undo = _audit_off() if mode == "off" else (lambda: None)
            if mode == "on":
                audit_module.append_pending = timed
            try:
                t = time.perf_counter()
                result = node.receive(io.BytesIO(env), "KZ")
                times[mode].append(time.perf_counter() - t)
                assert result.status == 200, result.body
            finally:
                undo()
                audit_module.append_pending = original
        node.engine.dispose()
    on, off = sum(times["on"]), sum(times["off"])
    med_on, med_off = statistics.median(times["on"]), statistics.median(times["off"])
    append_ms = spent[0] / max(spent[1], 1) * 1000
    print(
        f"  {label:<11} log on {len(times['on']) / on:7.1f} msg/s, "
        f"off {len(times['off']) / off:7.1f} msg/s: "
        f"on/off {off / on:4.2f} (median per message {med_on * 1000:.2f} vs {med_off * 1000:.2f} ms: "
        f"{med_off / med_on:4.2f})   target >= {EXCHANGE_TARGET}"
    )
    print(
        f"  {'':<11} the log's append inside each receive transaction: {append_ms:.2f} ms "
        f"({append_ms / (med_on * 1000):.1%} of a median receive)"
    )
    return off / on


# --- main -----------------------------------------------------------------------------------------


class Postgres:
    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        self.url = make_url(url)
        libpq = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.admin = psycopg.connect(libpq, autocommit=True)
        self.names: list[str] = []

    def create(self) -> str:
        name = f"prolink_bench_{secrets.token_hex(4)}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        url = self.url.set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        for name in self.names:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.close()


def log_parts(args: argparse.Namespace, pg: Postgres | None) -> bool:
    """Parts 1-3: append, export and verify, proofs."""
    from keys import generate_identity, load_identity
    from service.db import make_engine
    from service.node import Node
    from service.settings import Settings

    encoded, r = bench_append(args.entries)
    del encoded
    with tempfile.TemporaryDirectory(prefix="prolink-bench-audit-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "kz", party="KZ")
        generate_identity(settings.data_dir, "KZ", "KZ", settings.public_url, T0 - timedelta(days=1))
        bench_db_append(args.entries, settings.database_url, "SQLite", r["raw"])
        if pg is not None:
            bench_db_append(args.entries, pg.create(), "PostgreSQL", r["raw"])
        print()
        node = Node(
            settings,
            load_identity(settings.data_dir),
            make_engine(settings.database_url),
            clock=lambda: datetime.now(UTC),
        )
        ratio = bench_verify(node, args.entries, Path(tmp))
        print()
        bench_proofs(node, args.entries)
        node.engine.dispose()
    print()
    return ratio >= VERIFY_TARGET


def exchange_part(args: argparse.Namespace, pg: Postgres | None) -> bool:
    """Part 4: exchange throughput with the log on and off."""
    print("4. Exchange throughput (BY receives KZ's envelopes in-process), audit log on vs off")
    ok = bench_exchange("SQLite", {"KZ": None, "BY": None}, args.messages) >= EXCHANGE_TARGET
    if pg is not None:
        ok &= (
            bench_exchange("PostgreSQL", {"KZ": pg.create(), "BY": pg.create()}, args.messages)
            >= EXCHANGE_TARGET
        )
    print()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="prolink audit log benchmark")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=300, help="envelopes received in each mode")
    parser.add_argument("--postgres", help="also run on PostgreSQL (URL of a maintenance database)")
    parser.add_argument("--only", choices=("log", "exchange"), help="run parts 1-3 (log) or part 4 only")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # quiet: errors only
    print("prolink audit log benchmark")
    print(
        f"  Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"SQLite synchronous=FULL (WAL)"
    )
    print()
    pg = Postgres(args.postgres) if args.postgres else None
    ok = True
    try:
        if args.only in (None, "log"):
            ok &= log_parts(args, pg)
        if args.only in (None, "exchange"):
            ok &= exchange_part(args, pg)
    finally:
        if pg is not None:
            pg.close()
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

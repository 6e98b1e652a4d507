"""Exporting the audit log (JSON Lines or CSV) and verifying an export file offline.

An export covers the contiguous run of entries from the first one logged at or
after ``start`` to the last one logged at or before ``end`` (the whole log by
default). Before streaming, the export is itself recorded in the log
(``audit.exported``: who, which range, which format) and the node signs a fresh
head, so the export proves everything up to and including its own record.
It then streams, in batches of ``BATCH`` rows (memory does not grow with the
log): the header with the compact range of the entries before the range, the
entries' exact bytes, every head the node signed inside the range (with the
cosignatures peers returned), the newest head with a consistency proof from
the end of the range, and the newest cosigned head with a proof to it. The
format is described in ``protocol._auditlog``.

``verify_file`` is what ``prolink audit verify`` runs: it needs nothing but the
export and the Parties' public bundles.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

import protocol
from protocol import EXPORT_FORMAT, ExportFailure, ExportReport, ExportVerifier, TrustedParty, record_line
from service import audit
from service.db import session_scope
from service.errors import ServiceError
from service.models import AuditCosignature, AuditHead, Event
from service.node import Node, record_event

BATCH = 5000
FORMATS = ("jsonl", "csv")
CSV_COLUMNS = (
    "record",
    "seq",
    "at",
    "actor",
    "party",
    "type",
    "object_id",
    "outcome",
    "detail",
    "entry",
    "data",
)
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}

_event = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ExportPlan:
    """What one export will contain: decided (and recorded in the log) before streaming starts."""

    party: str
    head: audit.Head
    first: int
    count: int
    fmt: str
    start: datetime | None
    end: datetime | None
    exported_at: datetime
    exported_by: str


def prepare(
    node: Node, *, actor: str, fmt: str = "jsonl", start: datetime | None = None, end: datetime | None = None
) -> ExportPlan:
    """Record the export in the log, sign a head covering it, and fix the range of entries."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    now = node.clock()
    with session_scope(node.engine) as s:
        record_event(
            s,
            now,
            "audit.exported",
            "ok",
            actor=actor,
            format=fmt,
            range_from=start.isoformat() if start else None,
            range_to=end.isoformat() if end else None,
        )
        s.flush()
        audit.sign_head(s, node.identity.node_keys.signing, node.party, now)
        head = audit.latest_head(s)
    assert head is not None  # the export's own entry is in the log
    with node.engine.connect() as conn:
        first, count = _range(conn, head.size, start, end)
    return ExportPlan(node.party, head, first, count, fmt, start, end, now, actor)


def entry_proof(node: Node, seq: int, *, actor: str) -> bytes:
    """A proof, checkable offline with the bundles alone, that entry ``seq`` is in this node's log.

    The head is the newest one a peer cosigned that covers the entry; if none
    does yet, a head signed now (the request itself is recorded first, so the
    log always grows and such a head exists). ``protocol.verify_entry_proof``
    checks it; ``prolink audit verify-proof`` is its command line.
    """
    now = node.clock()
    with session_scope(node.engine) as s:
        conn = s.connection()
        size = audit.size(conn)
        if not 0 <= seq < size:
            raise ServiceError(
                f"the log has {size} entries; there is no entry {seq}", code="audit.no_such_entry", status=404
            )
        record_event(s, now, "audit.proof_issued", "ok", actor=actor, object_id=str(seq))
        s.flush()
        audit.sign_head(s, node.identity.node_keys.signing, node.party, now)
        cosigned = s.execute(
            select(func.max(AuditCosignature.head_size)).where(AuditCosignature.head_size > seq)
        ).scalar()
        head = audit.head_at(s, int(cosigned)) if cosigned is not None else audit.latest_head(s)
        assert head is not None and head.size > seq
        entry = bytes(conn.execute(select(_event.c.entry).where(_event.c.seq == seq)).scalar_one())
        path = audit.inclusion(conn, seq, head.size)
        note = audit.cosigned_note(s, head)
    return protocol.entry_proof(node.party, seq, entry, path, note)


def _range(conn: Connection, size: int, start: datetime | None, end: datetime | None) -> tuple[int, int]:
    lo = 0
    if start is not None:
        found = conn.execute(
            select(func.min(_event.c.seq)).where(_event.c.at >= start, _event.c.seq < size)
        ).scalar()
        lo = size if found is None else int(found)
    hi = size - 1
    if end is not None:
        found = conn.execute(
            select(func.max(_event.c.seq)).where(_event.c.at <= end, _event.c.seq < size)
        ).scalar()
        hi = -1 if found is None else int(found)
    if hi < lo:
        return min(lo, size), 0
    return lo, hi - lo + 1


def stream(engine: Engine, plan: ExportPlan) -> Iterator[bytes]:
    """The export as byte chunks (one per batch of entries)."""
    fmt = _Writer(plan.fmt)
    first, end, head = plan.first, plan.first + plan.count, plan.head
    with engine.connect() as conn:
        left = audit.compact_range_at(conn, first)
    yield fmt.record(
        "header",
        format=EXPORT_FORMAT,
        party=plan.party,
        origin=protocol.log_origin(plan.party),
        first_seq=first,
        count=plan.count,
        left=protocol.hashes_b64(left.hashes),
        range={
            "from": plan.start.isoformat() if plan.start else None,
            "to": plan.end.isoformat() if plan.end else None,
        },
        head_size=head.size,
        exported_at=plan.exported_at.isoformat(),
        exported_by=plan.exported_by,
    )
    if first > 0:
        yield from (fmt.record("checkpoint", note=note) for _, note in _heads(engine, first - 1, first))
    seq = first
    while seq < end:
        stop = min(seq + BATCH, end)
        with engine.connect() as conn:
            rows = conn.execute(
                select(_event.c.seq, _event.c.entry)
                .where(_event.c.seq >= seq, _event.c.seq < stop)
                .order_by(_event.c.seq)
            ).all()
        heads = dict(_heads(engine, seq, stop))
        out = []
        for row in rows:
            out.append(fmt.entry(bytes(row.entry)))
            note = heads.get(int(row.seq) + 1)
            if note is not None and int(row.seq) + 1 != head.size:  # that one is the head record
                out.append(fmt.record("checkpoint", note=note))
        yield b"".join(out)
        seq = stop
    with session_scope(engine, readonly=True) as s:
        conn = s.connection()
        proof = audit.consistency(conn, end, head.size)
        yield fmt.record(
            "head", note=audit.cosigned_note(s, head).decode("utf-8"), proof=protocol.hashes_b64(proof)
        )
        for size in _latest_cosigned(s):
            cosigned = audit.head_at(s, size)
            if cosigned is None or size > head.size:
                continue
            yield fmt.record(
                "cosigned",
                note=audit.cosigned_note(s, cosigned).decode("utf-8"),
                proof=protocol.hashes_b64(audit.consistency(conn, size, head.size)),
            )


def _heads(engine: Engine, lo: int, hi: int) -> list[tuple[int, str]]:
    """(size, cosigned note) of the heads with ``lo < size <= hi``."""
    with session_scope(engine, readonly=True) as s:
        rows = (
            s.execute(
                select(AuditHead).where(AuditHead.size > lo, AuditHead.size <= hi).order_by(AuditHead.size)
            )
            .scalars()
            .all()
        )  # type: ignore[arg-type]
        out = []
        for row in rows:
            head = audit.Head(row.size, bytes(row.root), row.signed_at, row.note.encode("utf-8"))
            out.append((row.size, audit.cosigned_note(s, head).decode("utf-8")))
        return out


def _latest_cosigned(s: Any) -> list[int]:
    """The newest head each peer cosigned (distinct sizes, newest first)."""
    rows = s.execute(
        select(AuditCosignature.party, func.max(AuditCosignature.head_size)).group_by(AuditCosignature.party)
    ).all()
    return sorted({int(size) for _, size in rows}, reverse=True)


class _Writer:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._first = True

    def _csv(self, row: Sequence[Any]) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if self._first:
            w.writerow(CSV_COLUMNS)
            self._first = False
        w.writerow(row)
        return buf.getvalue().encode("utf-8")

    def record(self, kind: str, **fields: Any) -> bytes:
        if self.fmt == "jsonl":
            return record_line(kind, **fields) + b"\n"
        data = record_line(kind, **fields).decode("utf-8")
        return self._csv([kind, "", "", "", "", "", "", "", "", "", data])

    def entry(self, data: bytes) -> bytes:
        if self.fmt == "jsonl":
            return data + b"\n"
        e = json.loads(data)
        detail = json.dumps(e["detail"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return self._csv(
            [
                "entry",
                e["seq"],
                e["at"],
                e["actor"],
                e["party"] or "",
                e["type"],
                e["object_id"] or "",
                e["outcome"],
                detail,
                data.decode("utf-8"),
                "",
            ]
        )


def export_to(node: Node, out: IO[bytes], **kwargs: Any) -> ExportPlan:
    plan = prepare(node, **kwargs)
    for chunk in stream(node.engine, plan):
        out.write(chunk)
    return plan


# --- offline verification ------------------------------------------------------------

READ_BLOCK = 4 * 1024 * 1024


def load_bundle(path: Path, fingerprint: str | None = None) -> TrustedParty:
    """A bundle file, verified under its own root key (and the fingerprint, when given)."""
    data = path.read_bytes()
    try:
        signed = protocol.Signed.from_bytes(data, what=str(path))
        payload = protocol.parse_json(signed.payload, what=str(path))
        root = protocol.VerifyKey(protocol.b64d(payload["root_key"]["public"], what="root_key.public"))
    except (KeyError, TypeError, protocol.ProlinkError) as exc:
        raise protocol.TrustError(
            f"{path} is not a prolink bundle ({exc})", code="trust.bad_bundle"
        ) from None
    return protocol.verify_bundle(data, expected_fingerprint=fingerprint, pinned_root=root)


def detect_format(path: Path) -> str:
    with path.open("rb") as f:
        start = f.read(16)
    return "csv" if start.startswith(b"record,") else "jsonl"


def verify_file(
    path: Path, bundles: dict[str, TrustedParty], extra_heads: Sequence[bytes] = ()
) -> ExportReport:
    """Verify an export file; on failure, ``ExportFailure`` says what is wrong as precisely as it can."""
    fmt = detect_format(path)
    v = ExportVerifier(bundles, extra_heads)
    try:
        if fmt == "jsonl":
            with path.open("rb") as f:
                while block := f.read(READ_BLOCK):
                    v.feed(block)
        else:
            _feed_csv(path, v)
        return v.close()
    except ExportFailure as exc:
        first_seq = v.first_seq
        if exc.interval is not None:
            lo, hi = exc.interval
            detail = protocol.diagnose(_entry_lines(path, fmt), first_seq, lo, hi)
            raise ExportFailure(
                f"{exc.message}\n  diagnosis: {detail}", code=exc.code, line=exc.line, interval=exc.interval
            ) from None
        raise


def _feed_csv(path: Path, v: ExportVerifier) -> None:
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        head = next(reader, None)
        if head is None or tuple(head) != CSV_COLUMNS:
            raise ExportFailure(
                "not a prolink audit CSV export (header row)", code="audit.bad_export", line=1
            )
        v.line = 1
        batch: list[bytes] = []
        for row in reader:
            if len(row) != len(CSV_COLUMNS):
                v.entries(batch)
                batch = []
                raise ExportFailure(
                    f"row {v.line + 1} has {len(row)} columns", code="audit.bad_export", line=v.line + 1
                )
            if row[0] == "entry":
                _check_csv_columns(row, v.line + len(batch) + 1)
                batch.append(row[9].encode("utf-8"))
                if len(batch) >= BATCH:
                    v.entries(batch)
                    batch = []
                continue
            if batch:
                v.entries(batch)
                batch = []
            v.line += 1
            try:
                obj = json.loads(row[10])
            except ValueError:
                raise ExportFailure(
                    f"row {v.line}: the data column is not JSON", code="audit.bad_export", line=v.line
                ) from None
            if not isinstance(obj, dict) or obj.get("record") != row[0]:
                raise ExportFailure(
                    f"row {v.line}: record column and data disagree", code="audit.bad_export", line=v.line
                )
            v.record(obj)
        if batch:
            v.entries(batch)


def _check_csv_columns(row: list[str], line: int) -> None:
    """The readable columns must say what the signed entry says (they are what a person reads)."""
    try:
        e = json.loads(row[9])
    except ValueError:
        return  # the hash check reports it, with a diagnosis
    if not isinstance(e, dict):
        return
    shown = {
        "seq": row[1],
        "at": row[2],
        "actor": row[3],
        "party": row[4],
        "type": row[5],
        "object_id": row[6],
        "outcome": row[7],
    }
    for column, value in shown.items():
        signed = e.get(column)
        expected = "" if signed is None else str(signed)
        if value != expected:
            raise ExportFailure(
                f"row {line}: column {column!r} reads {value!r} but the logged entry says "
                f"{expected!r}: the CSV was edited",
                code="audit.entry_mismatch",
                line=line,
            )
    detail = json.dumps(e.get("detail"), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if row[8] != detail:
        raise ExportFailure(
            f"row {line}: column 'detail' differs from the logged entry: the CSV was edited",
            code="audit.entry_mismatch",
            line=line,
        )


def _entry_lines(path: Path, fmt: str) -> Iterator[tuple[int, bytes]]:
    """(line or row number, entry bytes) of every entry in an export, for the diagnosis."""
    if fmt == "jsonl":
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip(b"\n")
                if not line.startswith(protocol.RECORD_PREFIX):
                    yield n, line
    else:
        with path.open("r", encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if n > 1 and row and row[0] == "entry" and len(row) == len(CSV_COLUMNS):
                    yield n, row[9].encode("utf-8")

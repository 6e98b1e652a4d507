"""The audit log's entries and its export format, and the offline verifier of an export.

An **entry** is one event as canonical JSON (sorted keys, compact, UTF-8):
``{"actor", "at", "detail", "object_id", "outcome", "party", "seq", "type", "v"}``.
Those exact bytes are the Merkle leaf (``SHA-256(0x00 || entry)``). The entry
names its own position (``seq``), so a deleted, inserted or reordered entry is
named as such, not only as "the root differs". Entries hold ids, hashes,
codes, purposes and outcomes; ``check_detail`` refuses keys that would carry
message content or secrets.

An **export** (``prolink-audit-export/1``, JSON Lines) is::

    {"record":"header", "origin", "party", "first_seq", "count", "left": [...]}
    <entry first_seq>                      the leaf bytes, verbatim, one per line
    {"record":"checkpoint","note": ...}    a head the log signed at exactly this size
    <entry> ...
    {"record":"head","note": ..., "proof": [...]}       the newest head, and the
                                           consistency proof from the end of the
                                           entries to it (RFC 9162 §2.1.4)
    {"record":"cosigned","note": ..., "proof": [...]}   the newest head a peer
                                           cosigned, and the proof from it to "head"

``left`` is the compact range of the entries before ``first_seq`` (empty for a
whole-log export), so a time-range export is verified without the entries
outside it. Record lines begin with ``{"record":``; entry lines never do (their
first key is ``actor``). The CSV form carries the same records, one per row.

``ExportVerifier`` consumes an export as bytes, recomputes the tree, checks
every checkpoint signature, cosignature and proof against the Parties' bundles
and either returns a report naming the head the entries match or raises
``LogError`` naming the line, entry or head that fails and why. Its hot path
only hashes; when something fails, ``diagnose`` re-reads the failing interval
to say whether an entry is missing, duplicated, out of order or altered.

Pure: bytes and bundles in; no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._checkpoint import (
    Checkpoint,
    Note,
    find_cosignatures,
    log_origin,
    parse_note,
    verify_note,
    witness_name,
)
from ._encoding import canonical_json, parse_json
from ._errors import EncodingError, LogError, ProlinkError
from ._merkle import HASH_SIZE, CompactRange, leaf_hash, verify_consistency, verify_inclusion
from ._primitives import VerifyKey
from ._trust import TrustedParty, format_time

ENTRY_VERSION = 1
EXPORT_FORMAT = "prolink-audit-export/1"
RECORD_PREFIX = b'{"record":'
MAX_ENTRY_BYTES = 16 * 1024

#: Detail keys that would put content or secrets into the log; refused outright.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "content",
        "body",
        "plaintext",
        "text",
        "document",
        "attachment",
        "attachment_data",
        "summary",
        "grounds",
        "token",
        "password",
        "passphrase",
        "secret",
        "private_key",
        "seed",
        "key_material",
    }
)


# --- entries ------------------------------------------------------------------


def check_detail(detail: Mapping[str, Any], path: str = "detail") -> None:
    """Refuse detail keys that name content or secrets (at any depth)."""
    for key, value in detail.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: keys must be strings")
        if key.lower() in FORBIDDEN_DETAIL_KEYS:
            raise ValueError(f"{path}.{key}: the audit log never holds content or secrets")
        if isinstance(value, Mapping):
            check_detail(value, f"{path}.{key}")


def entry_bytes(
    *,
    seq: int,
    at: datetime,
    actor: str,
    party: str | None,
    type: str,
    object_id: str | None,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
) -> bytes:
    """The canonical bytes of one entry: the Merkle leaf. ``at`` must be timezone-aware."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given to the audit log; pass an aware UTC datetime")
    detail = dict(detail or {})
    check_detail(detail)
    data = canonical_json(
        {
            "v": ENTRY_VERSION,
            "seq": seq,
            "at": format_time(at),
            "actor": actor,
            "party": party,
            "type": type,
            "object_id": object_id,
            "outcome": outcome,
            "detail": detail,
        }
    )
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(
            f"an audit entry is limited to {MAX_ENTRY_BYTES} bytes (ids and hashes, not content)"
        )
    return data


def parse_entry(data: bytes) -> dict[str, Any]:
    """Parse one entry and check that it is in canonical form with the expected fields."""
    obj = parse_json(data, what="audit entry")
    expected = {"v", "seq", "at", "actor", "party", "type", "object_id", "outcome", "detail"}
    if not isinstance(obj, dict) or set(obj) != expected:
        raise EncodingError("audit entry: wrong fields")
    if not isinstance(obj["seq"], int) or isinstance(obj["seq"], bool) or obj["seq"] < 0:
        raise EncodingError("audit entry: seq is not a non-negative integer")
    if canonical_json(obj) != data:
        raise EncodingError("audit entry: not in canonical JSON form")
    return obj


# --- export records --------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, *, what: str) -> bytes:
    if not isinstance(text, str):
        raise LogError(f"{what}: expected base64 text", code="audit.bad_export")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise LogError(f"{what}: not base64", code="audit.bad_export") from None
    return raw


def record_line(record: str, **fields: Any) -> bytes:
    """A record line: ``{"record": <kind>, ...}`` with the kind first, so it is told apart by its prefix."""
    return json.dumps({"record": record, **fields}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def hashes_b64(hashes: Iterable[bytes]) -> list[str]:
    return [b64(h) for h in hashes]


def _hash_list(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 64:
        raise LogError(f"{what}: expected a list of at most 64 hashes", code="audit.bad_export")
    out = [unb64(v, what=what) for v in value]
    if any(len(h) != HASH_SIZE for h in out):
        raise LogError(f"{what}: hashes are 32 bytes", code="audit.bad_export")
    return out


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeadInfo:
    """A checkpoint that verified: who signed it, when, and which peers cosigned it."""

    size: int
    root: bytes
    signed_at: datetime | None
    key_id: str
    cosigned_by: tuple[tuple[str, datetime], ...] = ()
    where: str = ""

    def describe(self) -> str:
        when = f" signed at {format_time(self.signed_at)}" if self.signed_at else ""
        cos = "".join(f", cosigned by {p} at {format_time(t)}" for p, t in self.cosigned_by)
        return f"head of size {self.size} (root {self.root.hex()[:16]}…){when}{cos}"


@dataclass
class ExportReport:
    """What an intact export proved."""

    party: str
    origin: str
    first_seq: int
    count: int
    head: HeadInfo
    checkpoints: list[HeadInfo] = field(default_factory=list)
    cosigned: list[HeadInfo] = field(default_factory=list)
    extra_heads: list[HeadInfo] = field(default_factory=list)
    bundles: dict[str, str] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def witnesses(self) -> list[tuple[str, int, datetime]]:
        """(peer, size, time) of every distinct cosignature that covers the exported entries."""
        out: dict[tuple[str, int], datetime] = {}
        for h in [*self.checkpoints, self.head, *self.cosigned]:
            for p, t in h.cosigned_by:
                out[(p, h.size)] = t
        return [(p, size, t) for (p, size), t in sorted(out.items())]

    def summary(self) -> str:
        lines = [
            f"INTACT: {self.count} entries (seq {self.first_seq}..{self.last_seq}) of log {self.origin} "
            f"match the {self.head.describe()} by {self.party}"
            if self.count
            else f"INTACT: no entries in range; the {self.head.describe()} of {self.origin} verified"
        ]
        lines.append(f"  {len(self.checkpoints)} signed checkpoint(s) inside the range matched the entries")
        wit = self.witnesses()
        if wit:
            best = max(wit, key=lambda w: w[1])
            lines.append(
                f"  witnessed: {len(wit)} cosignature(s); the largest cosigned size is {best[1]} "
                f"(by {best[0]} at {format_time(best[2])}), consistent with the head"
            )
        else:
            lines.append(
                "  WARNING: no cosignature by another Party covers this export; only "
                f"{self.party} vouches for it"
            )
        for h in self.extra_heads:
            lines.append(f"  the supplied {h.describe()} is consistent with the export")
        for party, fp in sorted(self.bundles.items()):
            lines.append(f"  bundle {party}: root key fingerprint {fp} (compare it out of band)")
        return "\n".join(lines)


class ExportFailure(LogError):
    """An export that does not verify; ``interval`` is the range of seqs a diagnosis should look at."""

    code = "audit.export_invalid"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        line: int | None = None,
        interval: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.line = line
        self.interval = interval


def open_head(
    raw: bytes, party: str, bundles: Mapping[str, TrustedParty], what: str = "head"
) -> tuple[Checkpoint, HeadInfo]:
    """A signed (and perhaps cosigned) head of ``party``'s log, checked against the bundles.

    The log's signature must verify with a node key of ``party``'s bundle that
    was valid and unrevoked at the head's time; cosignatures by the other
    Parties in ``bundles`` are verified the same way and listed.
    """
    origin = log_origin(party)
    note = parse_note(raw)
    cp = Checkpoint.parse(note.text)
    if cp.origin != origin:
        raise LogError(f"{what} is for log {cp.origin!r}, not {origin!r}", code="audit.wrong_origin")
    trusted = bundles[party]
    key = verify_note(note, origin, [k for k, _ in trusted.bundle.signing_keys])
    at = datetime.fromtimestamp(cp.time, UTC) if cp.time is not None else None
    if at is not None:
        trusted.signing_key(key.key_id, at)  # valid and unrevoked when it signed
    return cp, HeadInfo(cp.size, cp.root, at, key.key_id, tuple(_cosignatures(note, party, bundles)), what)


def _cosignatures(
    note: Note, party: str, bundles: Mapping[str, TrustedParty]
) -> Iterator[tuple[str, datetime]]:
    for witness, trusted in bundles.items():
        if witness == party:
            continue
        keys: list[VerifyKey] = [k for k, _ in trusted.bundle.signing_keys]
        for key, ts in find_cosignatures(note, witness_name(witness), keys):
            when = datetime.fromtimestamp(ts, UTC)
            trusted.signing_key(key.key_id, when)
            yield witness, when


# --- one entry and its proof ----------------------------------------------------

PROOF_FORMAT = "prolink-audit-proof/1"
_PROOF_FIELDS = {"format", "party", "seq", "entry", "tree_size", "inclusion", "checkpoint"}


def entry_proof(party: str, seq: int, entry: bytes, inclusion: Sequence[bytes], checkpoint: bytes) -> bytes:
    """A self-contained proof that entry ``seq`` is in ``party``'s log under a signed head (canonical JSON).

    ``checkpoint`` is the signed (and cosigned) note of the head; ``inclusion``
    the RFC 9162 audit path from the entry's leaf to that head's root.
    """
    size = Checkpoint.parse(parse_note(checkpoint).text).size
    return (
        canonical_json(
            {
                "format": PROOF_FORMAT,
                "party": party,
                "seq": seq,
                "entry": base64.b64encode(entry).decode("ascii"),
                "tree_size": size,
                "inclusion": [base64.b64encode(h).decode("ascii") for h in inclusion],
                "checkpoint": checkpoint.decode("utf-8"),
            }
        )
        + b"\n"
    )


@dataclass(frozen=True)
class ProvenEntry:
    """An entry shown to be in a log under a head its Party signed (and perhaps its peers cosigned)."""

    party: str
    seq: int
    entry: dict[str, Any]
    head: HeadInfo

    def summary(self) -> str:
        e = self.entry
        return (
            f"PROVEN: entry {self.seq} of log {log_origin(self.party)} is in its "
            f"{self.head.describe()}.\n"
            f"  {e['at']} {e['type']} {e['outcome']} actor={e['actor']} party={e['party']} "
            f"object={e['object_id']}"
        )


def verify_entry_proof(data: bytes, bundles: Mapping[str, TrustedParty]) -> ProvenEntry:
    """Check a proof from ``entry_proof`` with nothing but the Parties' bundles; ``LogError`` says why not."""
    try:
        obj = parse_json(data, what="audit proof")
        if not isinstance(obj, dict) or obj.get("format") != PROOF_FORMAT or set(obj) != _PROOF_FIELDS:
            raise LogError("not a prolink audit proof", code="audit.bad_proof")
        party, seq, size = obj["party"], obj["seq"], obj["tree_size"]
        if not isinstance(party, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (seq, size)
        ):
            raise LogError("audit proof: bad party, seq or tree size", code="audit.bad_proof")
        entry = base64.b64decode(obj["entry"], validate=True)
        path = [base64.b64decode(h, validate=True) for h in obj["inclusion"]]
        note = obj["checkpoint"].encode("utf-8")
    except (binascii.Error, TypeError, AttributeError, UnicodeError):
        raise LogError("audit proof: bad base64 or field types", code="audit.bad_proof") from None
    except EncodingError as exc:
        raise LogError(f"audit proof: {exc.message}", code="audit.bad_proof") from None
    if party not in bundles:
        raise LogError(f"no bundle given for {party}, whose log this is", code="audit.unknown_key")
    parsed = parse_entry(entry)
    if parsed["seq"] != seq:
        raise LogError(f"the entry is seq {parsed['seq']}, the proof says {seq}", code="audit.entry_mismatch")
    cp, head = open_head(note, party, bundles, "the proof's head")
    if cp.size != size:
        raise LogError(f"the head has size {cp.size}, the proof says {size}", code="audit.bad_proof")
    verify_inclusion(leaf_hash(entry), seq, cp.size, path, cp.root)
    return ProvenEntry(party, seq, parsed, head)


class ExportVerifier:
    """Streaming verifier of a ``prolink-audit-export/1``: feed bytes (JSONL) or records (CSV), then close.

    ``bundles`` are the verified bundles of the log's Party and of the peers
    whose cosignatures should be checked. ``extra_heads`` are signed
    checkpoints obtained elsewhere (e.g. the heads the other Party holds); each
    one whose size falls inside the exported range must match the entries.
    """

    def __init__(self, bundles: Mapping[str, TrustedParty], extra_heads: Sequence[bytes] = ()) -> None:
        self.bundles = dict(bundles)
        self._extra_raw = list(extra_heads)
        self._extra: dict[int, list[tuple[Checkpoint, HeadInfo]]] = {}
        self.line = 0
        self._tail = b""
        self._header: dict[str, Any] | None = None
        self._party = ""
        self._origin = ""
        self._cr = CompactRange()
        self._first = 0
        self._count = 0
        self._seen = 0
        self._good = 0  # size up to which the entries are proven by a checkpoint
        self._checkpoints: list[HeadInfo] = []
        self._cosigned: list[tuple[Checkpoint, HeadInfo, list[bytes]]] = []
        self._extra_ok: list[HeadInfo] = []
        self._head: tuple[Checkpoint, HeadInfo, list[bytes]] | None = None
        self._pending_sizes: list[int] = []

    # -- feeding -------------------------------------------------------------

    def feed(self, block: bytes) -> None:
        """Feed JSONL bytes in any block sizes."""
        data = self._tail + block
        last = data.rfind(b"\n")
        if last < 0:
            self._tail = data
            return
        self._tail = data[last + 1 :]
        self._lines(data, last)

    def _lines(self, data: bytes, end: int) -> None:
        """Process the complete lines in ``data[:end + 1]`` (``data[end]`` is a newline)."""
        pos = 0
        while pos <= end:
            nxt = data.find(RECORD_PREFIX, pos, end)
            while nxt > pos and data[nxt - 1] != 0x0A:  # only at the start of a line
                nxt = data.find(RECORD_PREFIX, nxt + 1, end)
            stop = end + 1 if nxt < 0 else nxt
            if stop > pos:  # a run of entry lines, each ending in a newline
                self.entries(data[pos : stop - 1].split(b"\n"))
            if nxt < 0:
                return
            line_end = data.find(b"\n", nxt, end + 1)
            self.line += 1
            try:
                obj = json.loads(data[nxt:line_end])
            except ValueError:
                raise ExportFailure(
                    f"line {self.line} is not valid JSON", code="audit.bad_export", line=self.line
                ) from None
            self.record(obj)
            pos = line_end + 1

    def entries(self, lines: list[bytes]) -> None:
        """A run of entry lines (their exact bytes, without newlines)."""
        if self._header is None:
            raise ExportFailure(
                "the export does not start with a header record", code="audit.bad_export", line=1
            )
        if self._head is not None:
            raise ExportFailure(
                f"line {self.line + 1}: entries after the head record",
                code="audit.bad_export",
                line=self.line + 1,
            )
        if b"" in lines:
            at = self.line + lines.index(b"") + 1
            raise ExportFailure(f"line {at} is empty", code="audit.bad_export", line=at)
        room = self._count - self._seen
        if len(lines) > room:
            at = self.line + room + 1
            raise ExportFailure(
                f"line {at}: more entries than the {self._count} the header announces: an entry was inserted "
                f"after seq {self._first + self._seen + room - 1}",
                code="audit.entry_inserted",
                line=at,
                interval=(self._good, self._first + self._count),
            )
        sha = hashlib.sha256
        cr = self._cr
        if self._pending_sizes:
            # Extra heads inside this run: stop at each of their sizes to compare roots.
            for line in lines:
                cr.extend((sha(b"\x00" + line).digest(),))
                self.line += 1
                self._seen += 1
                if cr.size in self._extra:
                    self._check_extra(cr.size)
            return
        cr.extend([sha(b"\x00" + line).digest() for line in lines])
        self.line += len(lines)
        self._seen += len(lines)

    def record(self, obj: Any) -> None:
        """One record (a parsed JSON object; ``self.line`` already counts it)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("record"), str):
            raise ExportFailure(f"line {self.line}: not a record", code="audit.bad_export", line=self.line)
        kind = obj["record"]
        if self._header is None and kind != "header":
            raise ExportFailure(
                "the export does not start with a header record", code="audit.bad_export", line=1
            )
        try:
            if kind == "header":
                self._on_header(obj)
            elif kind == "checkpoint":
                self._on_checkpoint(obj)
            elif kind == "head":
                self._on_head(obj)
            elif kind == "cosigned":
                self._on_cosigned(obj)
            else:
                raise ExportFailure(f"line {self.line}: unknown record {kind!r}", code="audit.bad_export")
        except ExportFailure as exc:
            exc.line = exc.line or self.line
            raise
        except ProlinkError as exc:
            raise ExportFailure(
                f"line {self.line} ({kind}): {exc.message}", code=exc.code, line=self.line
            ) from None

    # -- records ---------------------------------------------------------------

    def _on_header(self, obj: dict[str, Any]) -> None:
        if self._header is not None:
            raise ExportFailure(f"line {self.line}: a second header", code="audit.bad_export")
        if obj.get("format") != EXPORT_FORMAT:
            raise ExportFailure(f"not a {EXPORT_FORMAT} export", code="audit.bad_export")
        party, first, count = obj.get("party"), obj.get("first_seq"), obj.get("count")
        if (
            not isinstance(party, str)
            or not isinstance(first, int)
            or not isinstance(count, int)
            or not _nonneg(first)
            or not _nonneg(count)
        ):
            raise ExportFailure("header: party, first_seq and count are required", code="audit.bad_export")
        if party not in self.bundles:
            raise ExportFailure(
                f"the export is of {party}'s log but no bundle of {party} was given", code="audit.no_bundle"
            )
        origin = log_origin(party)
        if obj.get("origin") != origin:
            raise ExportFailure(
                f"header: origin {obj.get('origin')!r} is not {party}'s log {origin!r}",
                code="audit.wrong_origin",
            )
        left = _hash_list(obj.get("left", []), "header.left")
        self._cr = CompactRange(first, left)
        self._header, self._party, self._origin = obj, party, origin
        self._first, self._count, self._good = first, count, first
        for raw in self._extra_raw:
            cp, info = self._open(raw, "supplied head")
            if first <= cp.size <= first + count:
                self._extra.setdefault(cp.size, []).append((cp, info))
        self._pending_sizes = sorted(self._extra)
        if first in self._extra:
            self._check_extra(first)

    def _on_checkpoint(self, obj: dict[str, Any]) -> None:
        cp, info = self._open(_note(obj), f"checkpoint on line {self.line}")
        here = self._cr.size
        if cp.size != here:
            lo, off = self._good, abs(cp.size - here)
            raise ExportFailure(
                f"line {self.line}: the {info.describe()} comes after {here - self._first} entries, where "
                f"the tree has size {here}: {off} entr{'y is' if off == 1 else 'ies are'} "
                f"{'missing' if cp.size > here else 'extra'} between seq {lo} and "
                f"{max(cp.size, here) - 1}",
                code="audit.entry_missing" if cp.size > here else "audit.entry_inserted",
                interval=(lo, max(cp.size, here)),
            )
        if self._cr.root() != cp.root:
            raise ExportFailure(
                f"line {self.line}: entries seq {self._good}..{here - 1} do not match the {info.describe()}: "
                f"an entry in that range was altered, deleted, inserted or reordered",
                code="audit.entry_mismatch",
                interval=(self._good, here),
            )
        self._good = here
        self._checkpoints.append(info)

    def _on_head(self, obj: dict[str, Any]) -> None:
        if self._head is not None:
            raise ExportFailure(f"line {self.line}: a second head record", code="audit.bad_export")
        if self._seen != self._count:
            raise ExportFailure(
                f"line {self.line}: the header announces {self._count} entries but {self._seen} came before "
                f"the head: the export was truncated or entries were deleted",
                code="audit.entry_missing",
                interval=(self._good, self._first + self._count),
            )
        cp, info = self._open(_note(obj), "head")
        proof = _hash_list(obj.get("proof", []), "head.proof")
        end = self._cr.size
        if cp.size < end:
            raise ExportFailure(
                f"the head has size {cp.size}, smaller than the {end} entries exported",
                code="audit.bad_export",
            )
        try:
            verify_consistency(end, cp.size, self._cr.root(), cp.root, proof)
        except LogError:
            raise ExportFailure(
                f"entries seq {self._good}..{end - 1} do not match the {info.describe()}: the tree they "
                f"build (size {end}) is not a prefix of it, so an entry in that range was altered, deleted, "
                f"inserted or reordered (or the proof was changed)",
                code="audit.entry_mismatch",
                interval=(self._good, end),
            ) from None
        self._head = (cp, info, proof)
        if end > self._good:
            self._good = end

    def _on_cosigned(self, obj: dict[str, Any]) -> None:
        if self._head is None:
            raise ExportFailure(
                f"line {self.line}: a cosigned head before the head record", code="audit.bad_export"
            )
        cp, info = self._open(_note(obj), f"cosigned head on line {self.line}")
        if not info.cosigned_by:
            raise ExportFailure(
                f"line {self.line}: the {info.describe()} carries no cosignature by a known peer",
                code="audit.no_cosignature",
            )
        proof = _hash_list(obj.get("proof", []), "cosigned.proof")
        head, _, _ = self._head
        try:
            verify_consistency(cp.size, head.size, cp.root, head.root, proof)
        except LogError as exc:
            raise ExportFailure(
                f"the {info.describe()} is not consistent with the export's head of size "
                f"{head.size}: {exc.message}",
                code="audit.inconsistent",
            ) from None
        self._cosigned.append((cp, info, proof))

    def _check_extra(self, size: int) -> None:
        root = self._cr.root()
        for cp, info in self._extra.get(size, []):
            if cp.root != root:
                raise ExportFailure(
                    f"entries seq {self._good}..{size - 1} do not match the supplied {info.describe()}",
                    code="audit.entry_mismatch",
                    line=self.line,
                    interval=(self._good, size),
                )
            self._extra_ok.append(info)

    # -- signatures ------------------------------------------------------------

    def _open(self, raw: bytes, what: str) -> tuple[Checkpoint, HeadInfo]:
        return open_head(raw, self._party, self.bundles, what)

    # -- the end -----------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self._first

    def close(self) -> ExportReport:
        if self._tail:
            self._lines(self._tail + b"\n", len(self._tail))
            self._tail = b""
        if self._header is None:
            raise ExportFailure("the export is empty or has no header", code="audit.bad_export", line=1)
        if self._head is None:
            raise ExportFailure(
                f"the export ends without its head record (after {self._seen} of {self._count} entries): "
                f"it was truncated",
                code="audit.bad_export",
                line=self.line,
                interval=(self._good, self._first + self._count),
            )
        missing = [s for s in self._pending_sizes if s > self._first + self._seen]
        if missing:
            raise ExportFailure(
                f"supplied heads of sizes {missing} lie beyond the exported entries", code="audit.bad_export"
            )
        _, head, _ = self._head
        from ._trust import fingerprint

        return ExportReport(
            self._party,
            self._origin,
            self._first,
            self._count,
            head,
            self._checkpoints,
            [c[1] for c in self._cosigned],
            self._extra_ok,
            {p: fingerprint(t.bundle.root) for p, t in self.bundles.items()},
        )


def _nonneg(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _note(obj: Mapping[str, Any]) -> bytes:
    note = obj.get("note")
    if not isinstance(note, str):
        raise LogError("record has no note", code="audit.bad_export")
    return note.encode("utf-8")


def verify_export_bytes(
    data: bytes, bundles: Mapping[str, TrustedParty], extra_heads: Sequence[bytes] = ()
) -> ExportReport:
    """Verify a whole JSONL export held in memory (tests and small exports)."""
    v = ExportVerifier(bundles, extra_heads)
    v.feed(data)
    return v.close()


# --- diagnosis ------------------------------------------------------------------------


def diagnose(entries: Iterable[tuple[int, bytes]], first_seq: int, lo: int, hi: int) -> str:
    """Say what is wrong with the entries at positions ``lo..hi-1`` of an export.

    ``entries`` yields (line number, entry bytes) for every entry of the export
    in order, the first being at position ``first_seq``; only positions ``lo``
    to ``hi - 1`` (the stretch a failed check pointed at) are examined.
    Structural damage -- an entry edited out of canonical form, missing,
    duplicated, inserted or out of order -- is named with its line and seq; if
    the structure is intact, the content of an entry was altered.
    """
    position = first_seq - 1
    found: list[tuple[int, int, int]] = []  # (position, line, seq)
    for line_no, data in entries:
        position += 1
        if position < lo:
            continue
        if position >= hi:
            break
        try:
            seq = parse_entry(data)["seq"]
        except (EncodingError, ProlinkError) as exc:
            return (
                f"line {line_no} (entry seq {position}): {exc.message}: the entry was edited after it "
                f"was exported or stored"
            )
        found.append((position, line_no, seq))
    seqs = [seq for _, _, seq in found]
    expected = list(range(lo, lo + len(found)))
    if seqs == expected:
        return (
            f"every entry from seq {lo} to {hi - 1} is well-formed and in its place ({len(found)} "
            f"entries), so the content of at least one of them was altered after it was logged"
        )
    pos, line_no, seq = next((p, n, q) for p, n, q in found if p != q)
    dup = sorted({q for q in seqs if seqs.count(q) > 1})
    if sorted(seqs) == expected:
        return f"entries were reordered: line {line_no} holds seq {seq} where seq {pos} belongs"
    if dup:
        return (
            f"entry seq {dup[0]} appears more than once (first misplaced at line {line_no}): an entry "
            f"was inserted or duplicated"
        )
    if pos not in seqs:
        gone = [p for p in range(pos, (max(seqs) if seqs else pos) + 1) if p not in seqs]
        missing = f"seq {gone[0]}" if len(gone) == 1 else f"seqs {', '.join(map(str, gone[:5]))}"
        return f"entry {missing} is missing (deleted): line {line_no} holds seq {seq} where seq {pos} belongs"
    return f"an entry was inserted: line {line_no} holds seq {seq} where seq {pos} belongs"

"""The node's core operations: receive an envelope, send a document, read what arrived.

Routes (``peer_api``, ``user_api``) and the delivery worker call into here; this
module owns the transactions. What it must never do: store or log decrypted
content, answer a bad envelope with anything but a coded rejection, or change
anything stored when it rejects.
"""

from __future__ import annotations

import asyncio
import functools
import io
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, BinaryIO, Protocol, cast

import structlog
from sqlalchemy import any_, bindparam, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

import protocol
from keys import Identity, Signatory, load_signatory, storage_key
from protocol import Document, EnvelopeError, ProlinkError, TrustedParty, VerifiedMessage, read_framing
from service import audit, cases, outbox
from service.blobs import read_blob, write_blobs
from service.db import (
    commit_pipelined,
    new_ids,
    read_together,
    session_scope,
    unwrapped_reads,
    write_pipelined,
)
from service.errors import ServiceError, status_for
from service.group_commit import GroupCommit
from service.models import Message, Peer
from service.settings import Settings
from service.token_cache import TokenCache

log = structlog.get_logger("prolink.node")

SPOOL_MEMORY = 1024 * 1024
PEER_CACHE_SECONDS = 2.0
NODE_ACTOR = "node"


def utcnow() -> datetime:
    return datetime.now(UTC)


_message = Message.__table__  # type: ignore[attr-defined]
_INSERT_MESSAGE = insert(_message).inline()  # no RETURNING: pipelined on PostgreSQL
# The peers a store's rows refer to, locked as the inserts' foreign-key checks lock them (``_read_first``).
_PEERS_KEY_SHARE = (
    select(Peer.__table__.c.party)  # type: ignore[attr-defined]
    .where(Peer.__table__.c.party == any_(bindparam("parties")))  # type: ignore[attr-defined]
    .with_for_update(read=True, key_share=True)
)  # FOR KEY SHARE

_STORED_INBOUND = select(
    _message.c.id, _message.c.envelope_sha256, _message.c.receipt, _message.c.peer
).where(_message.c.direction == "in", _message.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True, slots=True)
class _StoredInbound:
    envelope_sha256: str
    receipt: bytes | None
    peer: str


@dataclass(frozen=True)
class _Checked:
    """An envelope that passed every check that needs no write, with its accepting receipt signed."""

    src: BinaryIO
    framing: protocol.Framing
    message: VerifiedMessage
    receipt: bytes

    @property
    def message_id(self) -> str:
        return self.framing.header.message_id

    @property
    def sender(self) -> str:
        return self.framing.header.sender

    @property
    def digest_hex(self) -> str:
        return self.framing.envelope_sha256.hex()

    def log_received(self) -> None:
        log.info(
            "envelope_received",
            message_id=self.message_id,
            sender=self.sender,
            kind=self.message.document.kind,
            size=self.framing.size,
        )

    def accepted(self) -> Delivery:
        return Delivery(
            200,
            {
                "status": "accepted",
                "receipt": protocol.Signed.from_bytes(self.receipt, what="receipt").to_json(),
            },
        )


@dataclass(frozen=True, slots=True)
class _Sending:
    """A signed message on its way into the outbox (``Node.send``)."""

    document: Document
    signatory: Signatory
    peer: str
    envelope: bytes | Iterable[bytes]  # in memory; or, with attachments, sealed as it is read
    actor: str
    at: datetime


@dataclass(frozen=True)
class Receipts:
    """A delivery's verified receipts, to record (``Node.record_receipts``): each claim, the receipt's bytes
    and the receipt as verified."""

    receipted: Sequence[tuple[outbox.Claim, bytes, protocol.Receipt]]


@dataclass(frozen=True)
class Delivery:
    """The peer API's answer to one delivery: HTTP status and JSON body (with a signed receipt when
    possible)."""

    status: int
    body: dict[str, Any]


def event_entry(
    at: datetime,
    type: str,
    outcome: str,
    *,
    actor: str = NODE_ACTOR,
    party: str | None = None,
    object_id: str | None = None,
    **detail: Any,
) -> audit.NewEntry:
    """An audit log entry to append (``record_events``). Never content: ids, hashes, codes, counts."""
    protocol.check_detail(detail)
    return audit.NewEntry(at, actor, party, type, object_id, outcome, detail)


def record_events(
    session: Session,
    entries: Sequence[audit.NewEntry],
    writes_first: Sequence[tuple[Any, Any]] = (),
    *,
    locked: Sequence[Sequence[Any]] | None = None,
    commit: bool = False,
) -> None:
    """Append ``entries`` to the audit log, in order, in this transaction (one lock, one insert).

    The entries get their place in the log (seq, Merkle leaf) at once, under
    the log's lock (``service.audit``), which is then held until the commit:
    record events last in a write transaction, so the lock is held briefly.
    Inside a savepoint they are rolled back with it. ``writes_first``: the caller's
    writes whose results nobody reads, sent with the entries' (``audit.append_rows``).
    ``locked``: the log's state as the caller read and locked it with its first
    reads (``audit.LOCK_READ``; ``Node._read_first``, whose writes follow at once).
    ``commit``: the transaction ends here (``db.commit_pipelined``: on PostgreSQL
    the COMMIT goes with the writes).
    """
    if not (entries or writes_first or commit):
        return
    _, writes = audit.append_writes(session.connection(), entries, writes_first, locked=locked)
    if commit:
        commit_pipelined(session, writes)
    else:
        write_pipelined(session.connection(), writes)


def record_event(
    session: Session,
    at: datetime,
    type: str,
    outcome: str,
    *,
    actor: str = NODE_ACTOR,
    party: str | None = None,
    object_id: str | None = None,
    **detail: Any,
) -> None:
    """Append one event to the audit log, in this transaction (``record_events``)."""
    record_events(
        session, [event_entry(at, type, outcome, actor=actor, party=party, object_id=object_id, **detail)]
    )


def spool(chunks: Iterable[bytes]) -> IO[bytes]:
    """Copy chunks into a temporary file (in memory up to 1 MiB), rewound."""
    tmp = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - caller closes it
    for chunk in chunks:
        tmp.write(chunk)
    tmp.seek(0)
    return tmp


def file_chunks(src: IO[bytes], block: int = 1024 * 1024) -> Iterator[bytes]:
    src.seek(0)
    while chunk := src.read(block):
        yield chunk


class LocalWorker(Protocol):
    """The delivery worker running in this process (``service.worker.DeliveryWorker``), as the send path
    sees it. ``prolink serve`` sets it as ``Node.worker``."""

    worker_id: str

    def hand_over(self, claims: Sequence[outbox.Claim]) -> None:
        """Deliver these rows, leased to ``worker_id`` by the committed send (``outbox.enqueue_leased``)."""

    def has_room(self, peer: str) -> bool:
        """Whether one more send to ``peer`` may be handed over now."""

    def wake(self) -> None:
        """Look for due rows in the outbox now."""


class Node:
    """One Party's node: its identity, its database, its peers."""

    def __init__(
        self, settings: Settings, identity: Identity, engine: Engine, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.engine = engine
        self._postgresql = engine.dialect.name == "postgresql"
        self.clock = clock
        self.party = identity.party
        self._peers: dict[str, tuple[float, int, str, TrustedParty]] = {}
        self._signatories: dict[str, Signatory] = {}
        self._storage_key: bytes | None = None
        # Sends without attachments, and the receipts of deliveries, that arrive together are stored in one
        # transaction (``_store_group``).
        self._writes: GroupCommit[_Sending | Receipts, Any] = GroupCommit(self._store_group)
        #: This process's delivery worker: what is sent is handed to it at once (``_store_group``).
        self.worker: LocalWorker | None = None
        #: PostgreSQL under ``prolink serve``: the tokens checked before (``service.token_cache``).
        self.token_cache: TokenCache | None = None

    def storage_key(self) -> bytes:
        if self._storage_key is None:
            self._storage_key = storage_key(self.settings.data_dir, passphrase=self.settings.key_passphrase())
        return self._storage_key

    def signatory(self, key_id: str) -> Signatory:
        """A signatory's key and authorisation held by this node (loaded once)."""
        cached = self._signatories.get(key_id)
        if cached is None:
            cached = load_signatory(self.settings.data_dir, key_id, passphrase=self.settings.key_passphrase())
            self._signatories[key_id] = cached
        return cached

    def loaded_signatory(self, key_id: str) -> Signatory | None:
        """``signatory`` if it is loaded already (loading reads and may decrypt a key file), else None."""
        return self._signatories.get(key_id)

    # --- peers -----------------------------------------------------------

    def peer(self, party: str, *, active_only: bool = True) -> TrustedParty:
        """The trusted bundle of ``party``.

        Kept in memory for ``PEER_CACHE_SECONDS`` (every delivery and every
        received envelope asks), re-verified when its stored version changes;
        ``peers_changed`` drops the cache at once after a change in this process,
        and other processes (replicas, the CLI) are seen within the TTL.
        """
        cached = self._cached_peer(party)
        if cached is None:
            stale = self._peers.get(party)
            with session_scope(self.engine, readonly=True) as s:
                row = s.get(Peer, party)
                if row is None:
                    self._peers.pop(party, None)
                    raise ServiceError(f"{party} is not a peer of this node", code="peer.unknown", status=404)
                version, status, bundle, fp = row.bundle_version, row.status, row.bundle, row.fingerprint
            if stale is not None and stale[1] == version:
                trusted = stale[3]
            else:
                trusted = protocol.verify_bundle(bundle, expected_fingerprint=fp)
            cached = (time.monotonic(), version, status, trusted)
            self._peers[party] = cached
        if active_only and cached[2] != "active":
            raise ServiceError(f"{party} is not an active peer of this node", code="peer.unknown", status=404)
        return cached[3]

    def _cached_peer(self, party: str) -> tuple[float, int, str, TrustedParty] | None:
        """``party``'s entry in the peer cache if it is fresh (``peer`` answers from it), else None."""
        cached = self._peers.get(party)
        if cached is None or time.monotonic() - cached[0] > PEER_CACHE_SECONDS:
            return None
        return cached

    def _fresh_peer(self, party: str) -> TrustedParty | None:
        """``peer(party, active_only=False)`` if it can answer from memory (no database read), else None."""
        cached = self._cached_peer(party)
        return cached[3] if cached is not None else None

    def peers_changed(self, party: str | None = None) -> None:
        """Forget cached peer facts (after adding, updating, suspending or resuming a peer)."""
        if party is None:
            self._peers.clear()
        else:
            self._peers.pop(party, None)

    def add_peer(self, bundle: bytes, fingerprint: str) -> TrustedParty:
        trusted = protocol.verify_bundle(bundle, expected_fingerprint=fingerprint)
        if trusted.party == self.party:
            raise ServiceError("a node cannot add itself as a peer", code="peer.is_self", status=409)
        now = self.clock()
        with session_scope(self.engine) as s:
            existing = s.get(Peer, trusted.party)
            if existing is not None:
                if trusted.bundle.version <= existing.bundle_version:
                    raise ServiceError(
                        f"{trusted.party} bundle version {trusted.bundle.version} is not newer than "
                        f"{existing.bundle_version}",
                        code="trust.bundle_rollback",
                        status=409,
                    )
                if existing.fingerprint != trusted.fingerprint:
                    raise ServiceError(
                        "bundle root differs from the peer's", code="trust.fingerprint_mismatch", status=409
                    )
                existing.bundle, existing.bundle_version = bundle, trusted.bundle.version
                existing.endpoint, existing.name = trusted.bundle.endpoint, trusted.bundle.name
            else:
                s.add(
                    Peer(
                        party=trusted.party,
                        name=trusted.bundle.name,
                        endpoint=trusted.bundle.endpoint,
                        fingerprint=trusted.fingerprint,
                        bundle=bundle,
                        bundle_version=trusted.bundle.version,
                        status="active",
                        added_at=now,
                    )
                )
            record_event(
                s,
                now,
                "peer.added",
                "ok",
                party=trusted.party,
                object_id=trusted.party,
                fingerprint=trusted.fingerprint,
                bundle_version=trusted.bundle.version,
            )
        self.peers_changed(trusted.party)
        return trusted

    def peer_parties(self) -> list[str]:
        with session_scope(self.engine, readonly=True) as s:
            return list(s.execute(select(Peer.party)).scalars())

    # --- receiving ---------------------------------------------------------

    def receive(self, src: BinaryIO, tls_peer: str | None = None) -> Delivery:
        """Verify, store, record and sign a receipt for one delivered envelope, in one transaction."""
        now = self.clock()
        checked = self._check_delivery(src, tls_peer, now)
        if isinstance(checked, Delivery):
            return checked
        try:
            with session_scope(self.engine) as s:
                effect = self._store_delivery(s, checked, now)
                record_events(s, self._received_events(checked, effect, now))
        except IntegrityError:
            # A concurrent delivery of the same message id won the race; answer as for a redelivery.
            stored = self._stored_receipt(checked.message_id, checked.digest_hex)
            if stored is not None:
                return stored
            raise
        except ProlinkError as exc:
            return self._reject(now, checked.framing.envelope_sha256, checked.message_id, checked.sender, exc)
        checked.log_received()
        return checked.accepted()

    def receive_batch(self, envelopes: list[bytes], tls_peer: str | None = None) -> list[Delivery]:
        """``receive`` for several envelopes, committed together: one answer per envelope, in order.

        Each envelope is checked on its own. If one is refused (a lifecycle step
        out of order, say), it is answered with its signed rejection and
        changes nothing, while the others are stored (``_store_checked``); the
        receipts are only sent once the one transaction holding all of them
        has committed.
        """
        now = self.clock()
        answers: list[Delivery | None] = []
        checked: list[tuple[int, _Checked]] = []
        first: dict[str, tuple[int, str]] = {}  # message id -> (index, digest) of its first checked envelope
        repeats: list[tuple[int, int]] = []  # (index, index of the same bytes earlier in the batch)
        framed = [(src, self._frame(src, now)) for src in map(io.BytesIO, envelopes)]
        results = self._check_framed(framed, tls_peer, now, open_ahead=self._postgresql)
        for index, result in enumerate(results):
            earlier = None if isinstance(result, Delivery) else first.get(result.message_id)
            if isinstance(result, Delivery):
                answers.append(result)
            elif earlier is None:
                first[result.message_id] = (index, result.digest_hex)
                answers.append(None)
                checked.append((index, result))
            elif earlier[1] == result.digest_hex:
                answers.append(None)
                repeats.append((index, earlier[0]))
            else:
                exc = EnvelopeError(
                    f"message {result.message_id} appears twice in the batch with other bytes",
                    code="envelope.conflicting_duplicate",
                )
                answers.append(
                    self._reject(now, result.framing.envelope_sha256, result.message_id, result.sender, exc)
                )
        raced: list[tuple[int, _Checked]] = []
        if checked:
            raced = self._store_checked(checked, now, answers)
            for index, item in checked:
                if answers[index] is not None and answers[index].status == 200:
                    item.log_received()
        for index, item in raced:  # another delivery of the same id committed first: answer as it was stored
            answers[index] = self._stored_receipt(item.message_id, item.digest_hex) or Delivery(
                409,
                {
                    "status": "rejected",
                    "error": {
                        "code": "envelope.duplicate_in_flight",
                        "message": "this message is being stored by another delivery",
                    },
                },
            )
        for index, earlier_index in repeats:  # the same bytes twice in one batch: the one answer
            answers[index] = answers[earlier_index]
        return cast("list[Delivery]", answers)  # every envelope has its answer by now

    def _store_checked(
        self, checked: list[tuple[int, _Checked]], now: datetime, answers: list[Delivery | None]
    ) -> list[tuple[int, _Checked]]:
        """Store a batch's checked envelopes in one transaction; returns those a concurrent delivery of the
        same message id stored first (answered by the caller).

        First without a savepoint per envelope, as the common case is: all
        accepted (a savepoint costs more than its envelope's inserts). If one
        is refused or raced, nothing of that attempt is kept, and the batch is
        stored again with a savepoint each: a refused one is answered with its
        signed rejection and changes nothing, the others are stored.
        """
        try:
            return self._store_in_one_transaction(checked, now, answers, savepoints=False)
        except (IntegrityError, ProlinkError):
            return self._store_in_one_transaction(checked, now, answers, savepoints=True)

    def _store_in_one_transaction(
        self,
        checked: list[tuple[int, _Checked]],
        now: datetime,
        answers: list[Delivery | None],
        *,
        savepoints: bool,
    ) -> list[tuple[int, _Checked]]:
        """``_store_checked``'s one attempt. Without ``savepoints``, a refused or raced envelope raises (and
        the transaction rolls back) instead of being answered."""
        raced: list[tuple[int, _Checked]] = []
        accepted: list[tuple[int, _Checked]] = []
        with session_scope(self.engine) as s:
            events: list[audit.NewEntry] = []  # the whole batch's, appended to the log at once, last
            if not savepoints:  # all or nothing: the rows of all of them with one statement per table
                items = [item for _, item in checked]
                read = self._read_first(
                    s,
                    [(item.message.document, now) for item in items],
                    peers=[item.sender for item in items],
                    blobs=len(items),
                    lock_audit=all(isinstance(item.src, io.BytesIO) for item in items),
                )
                writes: list[tuple[Any, Any]] = []  # sent with the audit entries and the COMMIT (PostgreSQL)
                effects = self._store_deliveries(s, items, now, read=read, defer=writes)
                for (index, item), effect in zip(checked, effects, strict=True):
                    events.extend(self._received_events(item, effect, now))
                    accepted.append((index, item))
                record_events(s, events, writes_first=writes, locked=read["audit"], commit=True)
            else:  # each on its own
                for index, item in checked:
                    try:
                        with s.begin_nested():
                            effect = self._store_delivery(s, item, now)
                    except IntegrityError:
                        raced.append((index, item))
                    except ProlinkError as exc:
                        if self._stored_inbound([item.message_id]):
                            # A racing delivery of this message committed first: its thread step is
                            # taken, so the lifecycle refuses this one. Answered as that one was stored.
                            raced.append((index, item))
                        else:
                            answers[index] = self._reject(
                                now,
                                item.framing.envelope_sha256,
                                item.message_id,
                                item.sender,
                                exc,
                                events=events,
                            )
                    else:
                        events.extend(self._received_events(item, effect, now))
                        accepted.append((index, item))
                record_events(s, events)
        for index, item in accepted:  # committed: now their receipts may go out
            answers[index] = item.accepted()
        return raced

    def _read_first(
        self,
        s: Session,
        docs: Sequence[tuple[Document, datetime]],
        *,
        peers: Iterable[str],
        blobs: int = 0,
        more: dict[str, tuple[Any, dict[str, Any]]] | None = None,
        lock_audit: bool = True,
    ) -> dict[str, Any]:
        """Everything a store transaction reads, read first and together (``db.read_together``: on PostgreSQL
        one round trip, with the BEGIN), by name:

        - ``threads`` and ``termination`` for ``docs`` (``cases.apply_many``; the threads locked);
        - PostgreSQL: the ``peers`` the rows to insert refer to, key-share locked, as their inserts would
          lock them (an operator's change to a peer locks it, then the audit log: taken later, these
          two would deadlock with it);
        - the caller's ``more`` (the outbox rows a receipt delivers, locked);
        - PostgreSQL: ``blob_ids`` for ``blobs`` new blobs (``write_blobs``), a list of ids, as is the
          ``outbox_ids`` a caller may ask for in ``more``;
        - with ``lock_audit``, last, the audit log's state (``audit``, locked until the commit).

        So the locks are taken in the order the transaction's statements took them when each ran on its
        own, except the audit log's, which comes before the writes instead of after them: it is held for
        the time the rows take to build and write. A store that streams an envelope (its time bounded only
        by the envelope's size) passes ``lock_audit=False`` and locks it at the end (``record_events``).
        """
        reads: dict[str, tuple[Any, dict[str, Any]]] = {}
        if docs:
            reads["threads"], reads["termination"] = cases.reads_for(docs, postgresql=self._postgresql)
        parties = sorted(set(peers))
        if self._postgresql and parties:
            reads["peers"] = (_PEERS_KEY_SHARE, {"parties": parties})
        reads.update(more or {})
        if self._postgresql and blobs:
            reads["blob_ids"] = new_ids("blob", blobs)
        if lock_audit:
            reads["audit"] = audit.LOCK_READ
        read: dict[str, Any] = {"audit": None}  # (unless locked here, record_events locks it at the end)
        read.update(zip(reads, read_together(s, list(reads.values())), strict=True))
        for name in ("blob_ids", "outbox_ids"):  # (``new_ids``: one id a row)
            if name in read:
                read[name] = [row[0] for row in read[name]]
        return read

    def record_refused_batch(self, exc: ProlinkError) -> None:
        """A batched delivery that could not be read at all: recorded like a malformed envelope."""
        self._reject_event(self.clock(), None, None, exc)

    def _check_delivery(self, src: BinaryIO, tls_peer: str | None, now: datetime) -> Delivery | _Checked:
        """Everything about a delivery that needs no write: framing, sender, redelivery, signature,
        decryption.

        Returns the answer when there is nothing to store (a rejection, or the
        stored receipt of a redelivery), else what ``_store_delivery`` needs.
        """
        framing = self._frame(src, now)
        if isinstance(framing, Delivery):
            return framing
        return self._check_framed([(src, framing)], tls_peer, now, open_ahead=False)[0]

    def _frame(self, src: BinaryIO, now: datetime) -> protocol.Framing | Delivery:
        """The envelope's framing (header read, bytes hashed, nothing verified), or the refusal to answer."""
        try:
            return read_framing(src)
        except ProlinkError as exc:
            self._reject_event(now, None, None, exc)
            return Delivery(400, {"status": "rejected", "error": {"code": exc.code, "message": exc.message}})

    def _check_framed(
        self,
        framed: Sequence[tuple[BinaryIO, protocol.Framing | Delivery]],
        tls_peer: str | None,
        now: datetime,
        *,
        open_ahead: bool,
    ) -> list[Delivery | _Checked]:
        """``_check_delivery`` after the framing, for one envelope or a batch's (a refused framing stays its
        answer), in order: the sender; a redelivery answered as stored; the opening.

        The rows already stored under the envelopes' message ids are looked up
        in one query. With ``open_ahead`` (a batch, its envelopes in memory, on
        PostgreSQL) that query runs in another thread while the envelopes are
        opened, so its round trip is not waited for on its own: each is opened
        before it is known to be a redelivery. That costs nothing but the opening
        (``_open`` has no effects), and a redelivery is still answered as stored,
        however its opening went. Without it (one envelope, which may be streamed
        and large) the lookup comes first and a redelivery is not opened.
        """
        senders = [
            framing if isinstance(framing, Delivery) else self._sender(framing, tls_peer, now)
            for _, framing in framed
        ]
        ids = list(
            {
                cast("protocol.Framing", framing).header.message_id
                for (_, framing), sender in zip(framed, senders, strict=True)
                if not isinstance(sender, Delivery)
            }
        )
        opened: list[VerifiedMessage | ProlinkError | None] = [None] * len(framed)
        if open_ahead and ids:
            lookup = _inbound_lookups().submit(self._stored_inbound, ids)
            try:
                opened = [
                    None if isinstance(sender, Delivery) else self._open(src, sender, now)
                    for (src, _), sender in zip(framed, senders, strict=True)
                ]
            finally:  # (waited for even if an opening failed: no lookup outlives its batch)
                known = lookup.result()
        else:
            known = self._stored_inbound(ids)
        results: list[Delivery | _Checked] = []
        for (src, framing), sender, was_opened in zip(framed, senders, opened, strict=True):
            if isinstance(sender, Delivery):
                results.append(sender)
                continue
            framing = cast("protocol.Framing", framing)
            stored = self._stored_receipt(framing.header.message_id, framing.envelope_sha256.hex(), known)
            if stored is not None:
                results.append(stored)
            else:
                opening = was_opened if was_opened is not None else self._open(src, sender, now)
                results.append(self._checked(src, framing, opening, now))
        return results

    def _sender(
        self, framing: protocol.Framing, tls_peer: str | None, now: datetime
    ) -> TrustedParty | Delivery:
        """The active peer that sent the envelope, with the signing key its header names; else the refusal."""
        header = framing.header
        try:
            if tls_peer is not None and tls_peer != header.sender:
                raise EnvelopeError(
                    f"TLS client is {tls_peer} but the envelope claims {header.sender}",
                    code="envelope.unknown_sender",
                )
            try:
                sender = self.peer(header.sender)
            except ServiceError:
                raise EnvelopeError(
                    f"{header.sender} is not an active peer", code="envelope.unknown_sender"
                ) from None
            from service.admin import ensure_signing_key

            sender = ensure_signing_key(self, sender, header.sender_key_id)  # unknown key: fetch its bundle
        except ProlinkError as exc:
            self._reject_event(now, header.message_id, header.sender, exc)
            return Delivery(403, {"status": "rejected", "error": {"code": exc.code, "message": exc.message}})
        return sender

    def _open(self, src: BinaryIO, sender: TrustedParty, now: datetime) -> VerifiedMessage | ProlinkError:
        """Verify and decrypt the envelope (``protocol.open``), or why not. No effects: nothing recorded."""
        try:
            return protocol.open(
                src,
                self.identity.node_keys,
                sender,
                now,
                max_age=timedelta(
                    seconds=self.settings.delivery_max_age_seconds + self.settings.clock_skew_seconds
                ),
                max_skew=timedelta(seconds=self.settings.clock_skew_seconds),
            )
        except ProlinkError as exc:
            return exc

    def _checked(
        self, src: BinaryIO, framing: protocol.Framing, opened: VerifiedMessage | ProlinkError, now: datetime
    ) -> Delivery | _Checked:
        """A new envelope, opened: its signed rejection (recorded), or what ``_store_delivery`` needs."""
        header = framing.header
        if isinstance(opened, ProlinkError):
            return self._reject(now, framing.envelope_sha256, header.message_id, header.sender, opened)
        receipt = protocol.make_receipt(
            framing.envelope_sha256,
            header.message_id,
            header.sender,
            protocol.ACCEPTED,
            None,
            self.identity.node_keys,
            now,
        )
        return _Checked(src, framing, opened, receipt)

    def _store_delivery(self, s: Session, item: _Checked, now: datetime) -> cases.Effect:
        """Apply and store one checked envelope in ``s`` (raises ``ProlinkError`` to refuse it).

        Its audit events are recorded by the caller (``_received_events``), after
        the store succeeded: a batch appends all of them to the log at once.
        """
        return self._store_deliveries(s, [item], now)[0]

    def _store_deliveries(
        self,
        s: Session,
        items: Sequence[_Checked],
        now: datetime,
        *,
        read: dict[str, Any] | None = None,
        defer: list[tuple[Any, Any]] | None = None,
    ) -> list[cases.Effect]:
        """``_store_delivery`` for several envelopes, all or none (the first refused raises).

        The lifecycle step of each is checked and recorded in order; then the rows
        of all of them are written with one statement per table. Envelopes a
        batch brought in memory are stored as they are; a spooled one is streamed.
        A duplicate message id fails the message insert (inside a savepoint, only
        that envelope's). ``read``: what the caller read at the start of the
        transaction (the threads, the termination notice, new blob ids on
        PostgreSQL); ``defer``: as for ``cases.apply_many``.
        """
        writes: list[tuple[Any, Any]] = [] if defer is None else defer  # (PostgreSQL: one round trip)
        effects = cases.apply_many(
            s,
            self.party,
            [(item.message.document, now) for item in items],
            originals_due_days=self.settings.originals_due_days,
            defer=writes,
            read=None if read is None else (read["threads"], read["termination"]),
        )
        contents = [
            item.src.getvalue() if isinstance(item.src, io.BytesIO) else file_chunks(item.src)
            for item in items
        ]
        blobs = write_blobs(
            s,
            contents,
            max_size=self.settings.max_envelope_bytes,
            defer=writes,
            ids=None if read is None else read.get("blob_ids"),
        )
        rows = []
        for item, effect, blob in zip(items, effects, blobs, strict=True):
            if blob.sha256 != item.digest_hex:
                raise EnvelopeError("envelope changed while being stored", code="envelope.storage_mismatch")
            rows.append(
                self._inbound_row(item.message, blob.id, item.framing.size, now, item.receipt, effect)
            )
        writes.append((_INSERT_MESSAGE, rows))
        if defer is None:
            write_pipelined(s.connection(), writes)
        return effects

    def _received_events(self, item: _Checked, effect: cases.Effect, now: datetime) -> list[audit.NewEntry]:
        header, message = item.framing.header, item.message
        return [
            event_entry(
                now,
                "message.received",
                "accepted",
                party=header.sender,
                object_id=header.message_id,
                envelope_sha256=item.digest_hex,
                kind=message.document.kind,
                thread_id=effect.thread_id,
                state_before=effect.state_before,
                state_after=effect.state_after,
                signer_key=message.authorisation.key.key_id,
            ),
            event_entry(
                now,
                "receipt.issued",
                "accepted",
                party=header.sender,
                object_id=header.message_id,
                envelope_sha256=item.digest_hex,
            ),
        ]

    def _inbound_row(
        self,
        message: VerifiedMessage,
        blob_id: int,
        size: int,
        now: datetime,
        receipt: bytes,
        effect: cases.Effect,
    ) -> dict[str, Any]:
        """The ``message`` row of a received envelope (inserted with Core: ``_INSERT_MESSAGE``)."""
        doc = message.document
        return {
            "id": message.message_id,
            "direction": "in",
            "peer": message.header.sender,
            "kind": doc.kind,
            "thread_id": doc.thread_id,
            "in_reply_to": doc.in_reply_to,
            "envelope_sha256": message.envelope_sha256.hex(),
            "envelope_size": size,
            "blob_id": blob_id,
            "created_at": now,
            "status": "received",
            "receipt": receipt,
            "receipt_status": protocol.ACCEPTED,
            "receipt_verified": True,
            "delivered_at": None,
            "summary": {
                "sent_at": message.header.sent_at.isoformat(),
                "signed_by_key": message.authorisation.key.key_id,
                "signer": f"{message.authorisation.person}, {message.authorisation.position}",
                "attachments": len(doc.attachments),
                "policy": cases.item_policy(doc, effect),
            },
        }

    def _stored_receipt(
        self, message_id: str, digest_hex: str, known: dict[str, _StoredInbound] | None = None
    ) -> Delivery | None:
        """Redelivery of the same bytes gets the stored receipt; other bytes under that id are refused.

        ``known``: the stored rows of a batch's message ids, looked up together (``_stored_inbound``).
        """
        row = (known if known is not None else self._stored_inbound([message_id])).get(message_id)
        if row is None:
            return None
        if row.envelope_sha256 == digest_hex and row.receipt is not None:
            return Delivery(
                200,
                {
                    "status": "accepted",
                    "redelivery": True,
                    "receipt": protocol.Signed.from_bytes(row.receipt, what="receipt").to_json(),
                },
            )
        exc = EnvelopeError(
            f"message {message_id} was already received with other bytes",
            code="envelope.conflicting_duplicate",
        )
        log.warning("conflicting_duplicate", message_id=message_id)
        return self._reject(self.clock(), bytes.fromhex(digest_hex), message_id, row.peer, exc)

    def _stored_inbound(self, message_ids: list[str]) -> dict[str, _StoredInbound]:
        """What is stored for these received message ids (one query)."""
        if not message_ids:
            return {}
        with unwrapped_reads(self.engine).connect() as conn:
            rows = conn.execute(_STORED_INBOUND, {"ids": message_ids}).all()
        return {r.id: _StoredInbound(r.envelope_sha256, r.receipt, r.peer) for r in rows}

    def _reject(
        self,
        now: datetime,
        envelope_sha256: bytes,
        message_id: str,
        sender: str,
        exc: ProlinkError,
        events: list[audit.NewEntry] | None = None,
    ) -> Delivery:
        receipt = protocol.make_receipt(
            envelope_sha256, message_id, sender, protocol.REJECTED, exc.code, self.identity.node_keys, now
        )
        self._reject_event(now, message_id, sender, exc, events=events, envelope_sha256=envelope_sha256.hex())
        return Delivery(
            status_for(exc),
            {
                "status": "rejected",
                "error": {"code": exc.code, "message": exc.message},
                "receipt": protocol.Signed.from_bytes(receipt, what="receipt").to_json(),
            },
        )

    def _reject_event(
        self,
        now: datetime,
        message_id: str | None,
        sender: str | None,
        exc: ProlinkError,
        events: list[audit.NewEntry] | None = None,
        **detail: Any,
    ) -> None:
        """Record a refusal: into ``events`` when given (a batch's, recorded with it), else in a transaction
        of its own."""
        log.warning("envelope_rejected", code=exc.code, message_id=message_id, sender=sender)
        entry = event_entry(now, "message.rejected", exc.code, party=sender, object_id=message_id, **detail)
        if events is not None:
            events.append(entry)
            return
        with session_scope(self.engine) as s:
            record_events(s, [entry])

    # --- sending -----------------------------------------------------------

    def check_signatory(self, signatory: Signatory, at: datetime) -> protocol.Authorisation:
        """Art. 4: the signer must hold an authorisation from our root, valid and unrevoked on ``at``."""
        me = self.identity.trusted_self()
        # The signature is verified once per root key (protocol.verify_authorisation remembers it); dates
        # and revocation below are checked on every send.
        auth = protocol.verify_authorisation(signatory.authorisation, me)
        if not auth.covers(at.date()):
            raise protocol.TrustError(
                f"{auth.person}'s signing authorisation is valid {auth.valid_from.isoformat()}.."
                f"{auth.valid_until.isoformat()}, not on {at.date().isoformat()}",
                code="trust.authorisation_not_valid",
            )
        me.check_not_revoked(auth.key.key_id, at, what="signatory key")
        return auth

    def send(
        self, document: Document, signatory: Signatory, attachments: list[IO[bytes]], actor: str
    ) -> Message:
        """Sign ``document`` as ``signatory``, seal it for its recipient and queue it, in one transaction.

        Signing and sealing happen before the transaction. Without attachments
        the envelope is small: it is sealed into memory, and sends that arrive
        together share one transaction (``group_commit``). With attachments it
        is sealed as it is stored, in a transaction of its own, so its size
        never bounds memory.
        """
        # A suspended peer still gets its messages queued: they are held (never claimed) until an
        # operator resumes it, exactly like those queued before the suspension.
        recipient = self.peer(document.recipient_party, active_only=False)
        sending = self._seal(document, signatory, attachments, actor, recipient)
        values = self._store_sends([sending])[0] if attachments else self._writes.submit(sending)
        return self._queued(values)

    async def send_async(self, document: Document, signatory: Signatory, actor: str) -> Message:
        """``send`` without attachments, for a coroutine on the event loop, with no thread of its own.

        Signed and sealed on the loop (CPU only: a stale peer entry is read
        again in a thread first), then stored by the group committer's thread
        (``GroupCommit.submit_async``) with whatever else is being sent, while
        the loop serves other requests. Under load, a hop to a pool thread and
        back for every request cost more CPU than the send itself.
        """
        recipient = self._fresh_peer(document.recipient_party) or await asyncio.to_thread(
            self.peer, document.recipient_party, active_only=False
        )  # (held if suspended, as in ``send``)
        values = await self._writes.submit_async(self._seal(document, signatory, [], actor, recipient))
        return self._queued(values)

    def _seal(
        self,
        document: Document,
        signatory: Signatory,
        attachments: list[IO[bytes]],
        actor: str,
        recipient: TrustedParty,
    ) -> _Sending:
        """Sign and seal (``send``) for ``recipient``; without attachments the envelope is sealed into
        memory here. CPU only: no database."""
        now = self.clock()
        self.check_signatory(signatory, document.created_at)
        signed = protocol.sign_document(document, signatory.key)
        sources = [file_chunks(f, protocol.CHUNK_SIZE) for f in attachments]
        envelope = protocol.seal_stream(
            signed, signatory.authorisation, sources, self.identity.node_keys, recipient, now, document
        )
        sealed = envelope if attachments else b"".join(envelope)
        return _Sending(document, signatory, recipient.party, sealed, actor, now)

    def _queued(self, values: dict[str, Any]) -> Message:
        log.info("message_queued", message_id=values["id"], peer=values["peer"], kind=values["kind"])
        return Message.model_construct(**values)  # as stored (validated by the insert; no session)

    def record_receipts(self, receipted: Sequence[tuple[outbox.Claim, bytes, protocol.Receipt]]) -> datetime:
        """Record a delivery's verified receipts: each outbox row delivered, its message delivered (or
        rejected) with its receipt, a ``receipt.received`` event each. Stored by the group committer with
        whatever else this node is storing at the time (``_store_group``: sends, other deliveries' receipts),
        in one transaction; returns once committed, with the time it recorded."""
        return cast("datetime", self._writes.submit(Receipts(tuple(receipted))))

    def _store_sends(self, sends: Sequence[_Sending]) -> list[dict[str, Any]]:
        """Store sealed messages, queued for delivery, in one transaction; the ``message`` row of each
        (``_store_group``)."""
        return cast("list[dict[str, Any]]", self._store_group(sends))

    def _store_group(self, items: Sequence[_Sending | Receipts]) -> list[Any]:
        """Store sealed messages and deliveries' receipts in one transaction; for each item, in order, the
        ``message`` row of a send, the time recorded for receipts.

        Each message's lifecycle step is checked and recorded in order (a later
        one may follow from an earlier); then the rows of all of them are
        written with one statement per table (blobs, chunks, messages, outbox
        rows, audit events), not several per message. The receipts of every
        delivery in the group are recorded with them (``outbox.mark_delivered_many``):
        the delivery threads and the API share one transaction, one audit-log
        lock and one commit, instead of one each.

        With a worker in this process (``prolink serve``), the envelopes it may
        send at once (``_may_hand_over``) are stored already claimed by it and,
        once committed, handed to it in memory: no claim and no read of the
        envelope stand between the commit and the request to the peer. The
        others are queued, and the worker is woken to claim them.
        """
        sends = [item for item in items if isinstance(item, _Sending)]
        receipted = [r for item in items if isinstance(item, Receipts) for r in item.receipted]
        stored: list[dict[str, Any]] = []
        events: list[audit.NewEntry] = []
        writes: list[tuple[Any, Any]] = []  # sent to the database together, with the COMMIT (PostgreSQL)
        worker = self.worker
        threads_in_group = Counter(send.document.thread_id for send in sends)
        handed = [
            worker is not None and self._may_hand_over(send, worker, threads_in_group) for send in sends
        ]
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.delivery_lease_seconds)
        outbox_ids: dict[str, int] = {}
        rows: list[tuple[str, str, datetime]] = []  # (message id, peer, sealed at) of each send
        docs = [(send.document, send.at) for send in sends]
        delivered = [outbox.Receipted(c.outbox_id, rb, r.status, True) for c, rb, r in receipted]
        with session_scope(self.engine) as s:
            more: dict[str, tuple[Any, dict[str, Any]]] = {}  # (the outbox rows delivered: locked)
            if receipted:
                more["delivered"] = outbox.delivery_read(delivered, now, postgresql=self._postgresql)
            if self._postgresql and any(handed):
                more["outbox_ids"] = new_ids("outbox", sum(handed))
            read = self._read_first(
                s,
                docs,
                peers=[send.peer for send in sends],
                blobs=len(sends),
                more=more,
                lock_audit=all(isinstance(send.envelope, bytes) for send in sends),
            )
            outbox_new_ids = read.get("outbox_ids")
            if sends:
                effects = cases.apply_many(
                    s,
                    self.party,
                    docs,
                    defer=writes,
                    originals_due_days=self.settings.originals_due_days,
                    read=(read["threads"], read["termination"]),
                )
                blobs = write_blobs(
                    s, [send.envelope for send in sends], defer=writes, ids=read.get("blob_ids")
                )
                for send, effect, blob, hand in zip(sends, effects, blobs, handed, strict=True):
                    stored.append(self._outbound_row(send, blob, hand))
                    events.append(
                        event_entry(
                            send.at,
                            "message.sealed",
                            "ok",
                            actor=send.actor,
                            party=send.peer,
                            object_id=send.document.id,
                            envelope_sha256=blob.sha256,
                            kind=send.document.kind,
                            thread_id=effect.thread_id,
                            state_before=effect.state_before,
                            state_after=effect.state_after,
                            signer_key=send.signatory.key.key_id,
                        )
                    )
                writes.append((_INSERT_MESSAGE, stored))
                rows = [(row["id"], row["peer"], row["created_at"]) for row in stored]
                outbox.enqueue_many(
                    s, [row for row, hand in zip(rows, handed, strict=True) if not hand], defer=writes
                )
                if worker is not None and any(handed):  # after the messages, which the rows refer to
                    if outbox_new_ids is None:  # SQLite: the insert hands the ids back, so it runs now
                        write_pipelined(s.connection(), writes)
                        writes = []
                    leased = [row for row, hand in zip(rows, handed, strict=True) if hand]
                    outbox_ids = outbox.enqueue_leased(
                        s, leased, worker.worker_id, lease_until, ids=outbox_new_ids, defer=writes
                    )
            if receipted:
                outbox.mark_delivered_many(s, delivered, now, defer=writes, delivered=read["delivered"])
                events.extend(
                    event_entry(
                        now,
                        "receipt.received",
                        receipt.status,
                        party=claim.peer,
                        object_id=claim.message_id,
                        envelope_sha256=claim.envelope_sha256,
                        reason_code=receipt.reason_code,
                    )
                    for claim, _, receipt in receipted
                )
            record_events(s, events, writes_first=writes, locked=read["audit"], commit=True)
        if worker is not None:  # committed: nothing from here on may fail the group (stored twice if it did)
            claims = [
                outbox.Claim(
                    outbox_id=outbox_ids[row["id"]],
                    message_id=row["id"],
                    peer=row["peer"],
                    attempts=1,
                    blob_id=row["blob_id"],
                    envelope_sha256=row["envelope_sha256"],
                    envelope_size=row["envelope_size"],
                    worker_id=worker.worker_id,
                    lease_expires_at=lease_until,
                    created_at=row["created_at"],
                    envelope=cast("bytes", send.envelope),
                )
                for row, send, hand in zip(stored, sends, handed, strict=True)
                if hand
            ]
            try:
                if claims:
                    worker.hand_over(claims)
                if not all(handed):  # some were queued: for the claim
                    worker.wake()
            except Exception as exc:  # noqa: BLE001 - logged: what was not handed over is claimed again
                # once its lease ends
                log.error(
                    "hand_over_failed",
                    error_type=type(exc).__name__,
                    error=str(exc)[:200],
                    messages=len(claims),
                )
        by_send = iter(stored)
        return [next(by_send) if isinstance(item, _Sending) else now for item in items]

    @staticmethod
    def _outbound_row(send: _Sending, blob: Any, handed: bool) -> dict[str, Any]:
        """The ``message`` row of a send (inserted with Core: ``_INSERT_MESSAGE``)."""
        document, signatory = send.document, send.signatory
        return {
            "id": document.id,
            "direction": "out",
            "peer": send.peer,
            "kind": document.kind,
            "thread_id": document.thread_id,
            "in_reply_to": document.in_reply_to,
            "envelope_sha256": blob.sha256,
            "envelope_size": blob.size,
            "blob_id": blob.id,
            "created_at": send.at,
            "status": "in_flight" if handed else "queued",
            "receipt": None,
            "receipt_status": None,
            "receipt_verified": False,
            "delivered_at": None,
            "summary": {
                "signed_by_key": signatory.key.key_id,
                "policy": {"confidentiality": document.confidentiality},
                "signer": f"{signatory.person}, {signatory.position}",
                "attachments": len(document.attachments),
            },
        }

    def _may_hand_over(self, send: _Sending, worker: LocalWorker, threads_in_group: Counter[str]) -> bool:
        """Whether ``send`` may go to ``worker`` straight from its commit, with no claim (``_store_group``).

        Its envelope is in memory (no attachments); its peer is active as far as
        this process knows, however long ago it looked (a suspension it has not seen
        yet is still caught: the worker checks before it sends, and gives the row
        back); fewer than a batch waits for that peer in the worker already; and
        nothing sent earlier can hold it back: it opens its thread, with no later
        message of the thread in the same group. A later message of a thread waits
        in the queue until its predecessor is delivered, as the claim keeps them in
        order (``outbox._deliverable``).
        """
        document = send.document
        known = self._peers.get(send.peer)
        return (
            document.thread_id == document.id
            and threads_in_group[document.thread_id] == 1
            and isinstance(send.envelope, bytes)
            and known is not None
            and known[2] == "active"
            and worker.has_room(send.peer)
        )

    # --- reading -------------------------------------------------------------

    @contextmanager
    def open_received(self, message_id: str) -> Iterator[tuple[VerifiedMessage, IO[bytes]]]:
        """Re-verify and decrypt a stored inbound envelope. The caller checks permissions first."""
        with session_scope(self.engine, readonly=True) as s:
            row = s.get(Message, (message_id, "in"))
            if row is None:
                raise ServiceError(f"no received message {message_id}", code="message.not_found", status=404)
            peer, blob_id = row.peer, row.blob_id
        src = spool(read_blob(self.engine, blob_id))
        try:
            sender = self.peer(peer, active_only=False)
            message = protocol.open(
                src,
                self.identity.node_keys,
                sender,
                self.clock(),
                max_age=None,
                max_skew=None,
                verify_attachments=False,
            )
            yield message, src
        finally:
            src.close()


@functools.cache
def _inbound_lookups() -> ThreadPoolExecutor:
    """Threads for the stored-row lookups of received batches (``Node._check_framed``), shared by the
    process's nodes: a lookup waits on the server while its batch is opened."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="inbound-lookup")


def new_message_id() -> str:
    return str(uuid.uuid4())

"""The delivery worker: takes due envelopes from the outbox and delivers them over mutual TLS.

A message counts as delivered only when the peer answered with a receipt
that verifies against the peer's bundle and names our exact envelope bytes.
Anything else (network error, 5xx, an unverifiable answer) is a failed attempt:
retried with exponential backoff and full jitter until the age limit, then
parked for an operator. Claims are leases, so several workers (replicas on one
PostgreSQL database) never deliver the same row at once, and a worker that dies
mid-delivery leaves a row that is claimed again when its lease runs out; the
receiver answers a redelivery of the same bytes with the receipt it stored.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

import protocol
from keys import client_ssl_context
from protocol import ProlinkError
from service import outbox
from service.admin import hold_if_suspended, on_receipt, peer_is_active
from service.background import BackgroundLoop
from service.blobs import read_blob, small_blobs
from service.db import session_scope
from service.errors import peer_error_code
from service.metrics import observe_delivery
from service.node import PEER_CACHE_SECONDS, Node, event_entry, record_events
from service.peer_api import BATCH_MEDIA_TYPE, BATCH_PATH, ENVELOPE_MEDIA_TYPE

log = structlog.get_logger("prolink.worker")

RENEW_EVERY_BYTES = 8 * 1024 * 1024
#: An envelope bigger than this always travels alone (streamed from the database).
BATCH_ENVELOPE_LIMIT = 256 * 1024


class DeliveryWorker(BackgroundLoop):
    """Runs in a thread beside the web servers of ``prolink serve``.

    Claims due deliveries and hands them to a pool of ``delivery_concurrency``
    threads, claiming again as soon as a thread is free, so new messages go out
    while earlier ones are still in flight. Small envelopes to one peer travel
    together in a batch (one request, one commit on each side, one receipt
    each); big ones are streamed alone. At most ``delivery_batches_per_peer``
    deliveries of small envelopes are in flight to one peer: what becomes due
    meanwhile is claimed when one of them ends, so under load batches fill up
    instead of many small ones each paying a request, a claim and two commits.

    What is sent in this process comes to the worker straight from the send's
    commit (``hand_over``), already claimed and with its bytes: it goes out in
    the next batch to its peer, with no claim and no read of the envelope. The
    thread whose batch to that peer ends sends that next batch itself
    (``_next_handed``), unless the dispatcher has due rows to claim or is due to look.
    Everything else (retries, replies that wait for an earlier message,
    messages of another process, expired leases) is claimed from the outbox
    when something asks for it (``wake``), after a delivery that left due rows
    behind, and at least every ``worker_poll_seconds``.
    """

    def __init__(self, node: Node, worker_id: str | None = None) -> None:
        self.node = node
        self.worker_id = worker_id or f"{node.party}-{uuid.uuid4().hex[:12]}"
        super().__init__(f"delivery-{self.worker_id}")
        self._clients: dict[tuple[str, int], httpx.Client] = {}
        self._clients_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(node.settings.delivery_concurrency)
        # Deliveries of small envelopes in flight, per peer (``delivery_batches_per_peer``).
        self._small_in_flight: Counter[str] = Counter()
        self._small_in_flight_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=node.settings.delivery_concurrency, thread_name_prefix=f"deliver-{node.party}"
        )
        self._again_after_delivery = False  # claim again as soon as a delivery ends (not at the next poll)
        self._peers: set[str] = set()  # ``_peer_parties``
        self._peers_read_at = float("-inf")
        # Peers (party, bundle version) that answered a batch with 404: sent one envelope at a time.
        self._unbatched: set[tuple[str, int]] = set()
        # Peers that refused a batch as too big: the most envelopes we put in one batch to them from now on.
        self._batch_items: dict[str, int] = {}
        # Handed over by this process's sends, per peer, oldest first: leased to us, waiting for a batch.
        self._handed: dict[str, list[outbox.Claim]] = {}
        self._handed_lock = threading.Lock()
        self._claim_wanted = True  # the next round claims from the outbox (``wake``)
        self._claimed_at = float("-inf")  # monotonic time of the last claim
        self._closed = False
        self._waiting_for_thread = False  # ``_dispatch`` has claimed more deliveries than free threads

    # --- lifecycle -------------------------------------------------------------

    failure_event = "delivery_round_failed"

    def interval(self) -> float:
        return self.node.settings.worker_poll_seconds

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        with self._handed_lock:
            self._closed = True  # what is handed over from now on goes straight back (``hand_over``)
            unsent = [c for claims in self._handed.values() for c in claims]
            self._handed.clear()
        if unsent:  # back in the queue now, for the next start or another replica, not after their lease
            self._give_back(unsent, "worker_stopped")

    def wake(self) -> None:
        """Claim due rows from the outbox now, instead of at the next poll."""
        self._claim_wanted = True
        super().wake()

    def _wake_to_send(self) -> None:
        """Run the next round now for what was handed over: no claim from the outbox for it."""
        super().wake()

    def hand_over(self, claims: Sequence[outbox.Claim]) -> None:
        """Deliver ``claims``, which a committed send stored as leased to us (``outbox.enqueue_leased``), with
        their envelopes: in the next batch to their peer. After ``close`` they go back to the queue."""
        with self._handed_lock:
            closed = self._closed
            if not closed:
                for claim in claims:
                    self._handed.setdefault(claim.peer, []).append(claim)
        if closed:
            self._give_back(list(claims), "worker_stopped")
        else:
            self._wake_to_send()

    def has_room(self, peer: str) -> bool:
        """Whether a send to ``peer`` may be handed over (``Node._may_hand_over``): fewer than a batch waits
        for it already. Beyond that, sends are queued: what a crash leaves leased, and what waits in memory,
        stays within a batch per peer."""
        with self._handed_lock:
            return not self._closed and len(self._handed.get(peer, ())) < self.node.settings.batch_max_items

    def round(self) -> bool:
        return self._dispatch() > 0

    def _dispatch(self) -> int:
        """Start deliveries on every free delivery thread: of what was handed over, and of what a claim
        found due, when one is wanted; returns how many were started."""
        free = 0
        while self._slots.acquire(blocking=False):
            free += 1
        if not free:  # every thread busy: a finishing delivery wakes us
            self._again_after_delivery = True
            return 0
        settings = self.node.settings
        claim_wanted, self._claim_wanted = self._claim_wanted, False  # (a wake from now on: the next round's)
        with self._small_in_flight_lock:  # what becomes due for these waits for their deliveries to end
            in_flight = dict(self._small_in_flight)
        busy = sorted(peer for peer, n in in_flight.items() if n >= settings.delivery_batches_per_peer)
        if self._handed and self._give_back_stale():
            claim_wanted = True  # what went back is due: claimed now
        claims: list[outbox.Claim] = []
        if claim_wanted or time.monotonic() - self._claimed_at >= self.interval():
            if busy and set(busy) >= self._peer_parties():  # nothing could be claimed: spare the query
                self._again_after_delivery = True  # the end of a delivery to one of them claims again
            else:
                try:
                    result = outbox.claim_due(
                        self.node.engine,
                        self.worker_id,
                        self.node.clock(),
                        free * settings.batch_max_items,
                        settings.delivery_lease_seconds,
                        busy_peers=busy,
                    )
                except BaseException:
                    for _ in range(free):
                        self._slots.release()
                    raise
                self._claimed_at = time.monotonic()
                claims = result.claims
                # Look again when a delivery ends only if something due was left behind (the rest of a
                # thread waits for its earlier message; or more was due than we took; or a busy peer's
                # rows were not looked at); else the next send wakes us.
                self._again_after_delivery = result.more or bool(busy)
        claims += self._take_handed(in_flight, busy, claims, free)
        groups = self._groups(claims)
        # More groups than free threads (big envelopes travel alone): the rest wait for a thread, and the
        # threads that end meanwhile give theirs up instead of sending on what was handed over
        # (``_next_handed``).
        self._waiting_for_thread = len(groups) > free
        try:
            for index, group in enumerate(groups):
                while index >= free and not self._slots.acquire(timeout=0.5):
                    if self._stop.is_set():  # the claims not started go back to the queue
                        self._give_back([c for g in groups[index:] for c in g], "worker_stopped")
                        return len(claims)
                small = group[0].envelope_size <= BATCH_ENVELOPE_LIMIT
                if small:
                    with self._small_in_flight_lock:
                        self._small_in_flight[group[0].peer] += 1
                self._pool.submit(self._run_group, group, small)
        finally:
            self._waiting_for_thread = False
        for _ in range(free - len(groups)):
            self._slots.release()
        return len(claims)

    def _give_back_stale(self) -> bool:
        """Give back to the queue what was handed over and has waited half its lease (for a peer busy that
        long): sent now, it could still be in flight when another worker takes it over. Whether any went."""
        now = self.node.clock()
        stale: list[outbox.Claim] = []
        with self._handed_lock:
            for peer, waiting in list(self._handed.items()):
                fresh: list[outbox.Claim] = []
                for claim in waiting:
                    (stale if self._lease_half_gone(claim, now) else fresh).append(claim)
                if len(fresh) < len(waiting):
                    self._set_handed(peer, fresh)
        if stale:
            self._give_back(stale, "handed_over_lease_half_gone")
        return bool(stale)

    def _lease_half_gone(self, claim: outbox.Claim, now: datetime) -> bool:
        """Whether a claim handed over has waited half its lease: it goes back to the queue, not to the
        peer (``_give_back_stale``)."""
        half = timedelta(seconds=self.node.settings.delivery_lease_seconds) / 2
        return claim.lease_expires_at - now <= half

    @staticmethod
    def _fitting(waiting: list[outbox.Claim], items: int, room: int, each_at_most: int | None = None) -> int:
        """How many of ``waiting``, oldest first, fill at most ``items`` envelopes and ``room`` bytes
        (none over ``each_at_most``)."""
        n = 0
        for claim in waiting[: max(items, 0)]:
            if claim.envelope_size > min(room, each_at_most if each_at_most is not None else room):
                break
            room -= claim.envelope_size
            n += 1
        return n

    def _take_handed(
        self, in_flight: dict[str, int], busy: list[str], claimed: list[outbox.Claim], free: int
    ) -> list[outbox.Claim]:
        """What was handed over for peers with room for another delivery, oldest first, after ``claimed``
        (the outbox's due rows go first): no more than the peer's free batches hold (its own batch size,
        ``batch_max_bytes``), nor than the free delivery threads carry."""
        settings = self.node.settings
        threads = free - len(self._groups(claimed))
        taken: list[outbox.Claim] = []
        with self._handed_lock:
            for peer, waiting in list(self._handed.items()):
                batches = min(settings.delivery_batches_per_peer - in_flight.get(peer, 0), threads)
                if peer in busy or batches <= 0:
                    continue
                ours = [c for c in claimed if c.peer == peer]  # (they fill the same batches first)
                items = batches * self._batch_items.get(peer, settings.batch_max_items) - len(ours)
                n = self._fitting(
                    waiting, items, batches * settings.batch_max_bytes - sum(c.envelope_size for c in ours)
                )
                if n:
                    taken += waiting[:n]
                    threads -= batches
                    self._set_handed(peer, waiting[n:])
        return taken

    def _set_handed(self, peer: str, waiting: list[outbox.Claim]) -> None:
        """What still waits for ``peer`` (under ``_handed_lock``)."""
        if waiting:
            self._handed[peer] = waiting
        else:
            del self._handed[peer]

    def _give_back(self, claims: list[outbox.Claim], why: str) -> None:
        """Put claims that will not be sent (handed over, or claimed and never started) back in the queue
        (``outbox.give_back``); if the database fails, their leases run out instead."""
        try:
            with session_scope(self.node.engine) as s:
                outbox.give_back(s, claims)
            log.info("claims_given_back", why=why, envelopes=len(claims))
        except Exception as exc:  # noqa: BLE001 - logged; their leases run out instead
            log.warning(
                "claims_not_given_back", why=why, envelopes=len(claims), error_type=type(exc).__name__
            )

    def _peer_parties(self) -> set[str]:
        """The peers (every outbox row is for one of them), read again every ``PEER_CACHE_SECONDS``."""
        now = time.monotonic()
        if now - self._peers_read_at > PEER_CACHE_SECONDS:
            self._peers = set(self.node.peer_parties())
            self._peers_read_at = now
        return self._peers

    def _run_group(self, group: list[outbox.Claim], small: bool) -> None:
        peer = group[0].peer
        try:
            while group:
                try:
                    self.deliver_group(group)
                except Exception as exc:  # noqa: BLE001 - a thread of the pool must not die silently
                    log.error(
                        "delivery_failed_unexpectedly", error_type=type(exc).__name__, error=str(exc)[:300]
                    )
                group = self._next_handed(peer) if small else []
        finally:
            if small:
                with self._small_in_flight_lock:
                    self._small_in_flight[peer] -= 1
            self._slots.release()
            if self._again_after_delivery:  # a claim left due rows (or a busy peer's) behind: claim again
                self.wake()
            elif self._handed:  # what was handed over meanwhile goes now
                self._wake_to_send()

    def _next_handed(self, peer: str) -> list[outbox.Claim]:
        """What was handed over for ``peer`` while its delivery was in flight, as the next batch: sent on by
        the same thread, which keeps its slot, instead of waking the dispatcher to start another thread
        for it (two hand-overs between threads, each waiting for the interpreter on a busy node).

        Nothing when the dispatcher has other work or is due to look: due rows left in the outbox
        (``_again_after_delivery``), claimed rows waiting for a thread, a claim asked for or an interval
        gone by, a stop. Then this delivery ends as before and the dispatcher's round takes the outbox's
        rows first, then these.
        """
        if (
            self._stop.is_set()
            or self._again_after_delivery
            or self._claim_wanted
            or self._waiting_for_thread
            or time.monotonic() - self._claimed_at >= self.interval()
        ):
            return []
        settings, now = self.node.settings, self.node.clock()
        with self._handed_lock:
            waiting = self._handed.get(peer, [])
            # (one with half its lease gone is the dispatcher's, to give back; a big one travels alone)
            fresh = list(itertools.takewhile(lambda claim: not self._lease_half_gone(claim, now), waiting))
            n = self._fitting(
                fresh,
                self._batch_items.get(peer, settings.batch_max_items),
                settings.batch_max_bytes,
                each_at_most=BATCH_ENVELOPE_LIMIT,
            )
            if n:
                self._set_handed(peer, waiting[n:])
            return waiting[:n]

    def _groups(self, claims: list[outbox.Claim]) -> list[list[outbox.Claim]]:
        """Claims cut into deliveries: batches of small envelopes to one peer, each big envelope alone."""
        settings = self.node.settings
        groups: list[list[outbox.Claim]] = []
        filling: dict[str, tuple[list[outbox.Claim], int]] = {}
        for c in claims:
            if c.envelope_size > BATCH_ENVELOPE_LIMIT:
                groups.append([c])
                continue
            group, size = filling.get(c.peer, ([], 0))
            most = min(settings.batch_max_items, self._batch_items.get(c.peer, settings.batch_max_items))
            full = len(group) >= most or size + c.envelope_size > settings.batch_max_bytes
            if not group or full:
                group, size = [], 0
                groups.append(group)
            group.append(c)
            filling[c.peer] = (group, size + c.envelope_size)
        return groups

    def deliver_group(self, group: list[outbox.Claim]) -> list[str]:
        """Deliver a group (``_groups``): one request for a batch, else each alone; the outcome of each."""
        if len(group) > 1 and self._batches_allowed(group[0].peer):
            return self.deliver_batch(group)
        return [self.deliver(c) for c in group]

    # --- deliveries ------------------------------------------------------------

    def _client(self, party: str) -> tuple[httpx.Client, str]:
        """A keep-alive client for ``party`` (its current bundle's TLS CA) and its peer API's base URL."""
        trusted = self.node.peer(party)
        key = (party, trusted.bundle.version)
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                ctx = client_ssl_context(
                    self.node.identity, trusted.bundle.tls_ca_pem, allow_tls12=self.node.settings.allow_tls12
                )
                limits = httpx.Limits(max_connections=self.node.settings.delivery_concurrency)
                client = httpx.Client(verify=ctx, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits)
                self._clients[key] = client
        return client, trusted.bundle.endpoint.rstrip("/")

    def deliver(self, claim: outbox.Claim) -> str:
        """Try one delivery; returns the outcome ('delivered', 'rejected', 'queued', 'parked' or 'held')."""
        node = self.node
        if hold_if_suspended(node, claim):  # suspended since the claim: nothing is sent
            return "held"
        try:
            client, base = self._client(claim.peer)
            response = client.post(
                base + "/v1/envelopes",
                content=self._body(claim),
                headers={"content-type": ENVELOPE_MEDIA_TYPE, "content-length": str(claim.envelope_size)},
            )
            outcome = self._settle([claim], [(response.status_code, _json_or_none(response))])[0]
        except (httpx.HTTPError, OSError) as exc:
            outcome = self._failed(claim, f"transport: {type(exc).__name__}: {exc}"[:500])
        except ProlinkError as exc:
            outcome = self._failed(claim, f"{exc.code}: {exc.message}")
        log.info(
            "delivery_attempt",
            message_id=claim.message_id,
            peer=claim.peer,
            attempt=claim.attempts,
            outcome=outcome,
        )
        return outcome

    def _batches_allowed(self, party: str) -> bool:
        if self.node.settings.batch_max_items <= 1:
            return False
        try:
            return (party, self.node.peer(party).bundle.version) not in self._unbatched
        except ProlinkError:
            return False  # unknown or suspended peer: ``deliver`` deals with each claim

    def deliver_batch(self, claims: list[outbox.Claim]) -> list[str]:
        """Deliver several small envelopes to one peer in one request; the outcome of each, in order.

        Each envelope gets its own answer and receipt, verified exactly as for a
        single delivery; the ones that came back with a valid receipt are marked
        delivered in one transaction. A peer that does not take batches (404) is
        remembered and sent each envelope alone from then on.
        """
        node, peer = self.node, claims[0].peer
        if not peer_is_active(node, peer):
            return [self.deliver(c) for c in claims]  # each is held back in the queue
        try:
            client, base = self._client(peer)
            version = node.peer(peer).bundle.version
            body = protocol.encode_batch(self._envelopes(claims))
            response = client.post(
                base + BATCH_PATH, content=body, headers={"content-type": BATCH_MEDIA_TYPE}
            )
        except (httpx.HTTPError, OSError) as exc:
            return self._batch_failed(peer, claims, f"transport: {type(exc).__name__}: {exc}"[:500])
        except ProlinkError as exc:
            return self._batch_failed(peer, claims, f"{exc.code}: {exc.message}")
        if response.status_code in (404, 405):  # a node without batches: one by one, from now on
            self._unbatched.add((peer, version))
            log.info("peer_takes_no_batches", peer=peer, status=response.status_code)
            return [self.deliver(c) for c in claims]
        if response.status_code in (400, 413) and peer_error_code(response).startswith("batch."):
            # The peer takes smaller batches than ours (its own limits): halve, remember, try the halves.
            half = len(claims) // 2
            self._batch_items[peer] = max(1, min(half, self._batch_items.get(peer, half)))
            log.info(
                "peer_refused_batch",
                peer=peer,
                code=peer_error_code(response),
                envelopes=len(claims),
                next_batch_items=self._batch_items[peer],
            )
            return [
                outcome for part in (claims[:half], claims[half:]) for outcome in self.deliver_group(part)
            ]
        if response.status_code >= 500:
            return self._batch_failed(peer, claims, f"peer answered HTTP {response.status_code} to a batch")
        answer = _json_or_none(response)
        results = answer.get("results") if isinstance(answer, dict) else None
        if (
            not isinstance(results, list)
            or len(results) != len(claims)
            or not all(isinstance(r, dict) for r in results)
        ):
            return self._batch_failed(
                peer, claims, f"HTTP {response.status_code} without one answer per envelope"
            )
        outcomes = self._settle(claims, [(_status_of(r), r) for r in results])
        _log_batch(peer, claims, outcomes)
        return outcomes

    def _batch_failed(self, peer: str, claims: list[outbox.Claim], error: str) -> list[str]:
        """A batch without an answer for each envelope: a failed attempt each, logged as an answered one."""
        outcomes = self._failed_many(claims, error)
        _log_batch(peer, claims, outcomes, error=error[:200])
        return outcomes

    def _envelopes(self, claims: list[outbox.Claim]) -> list[bytes]:
        """The envelopes of a batch: in memory if handed over (``hand_over``), else read in one go."""
        read = iter(
            small_blobs(
                self.node.engine,
                [c.blob_id for c in claims if c.envelope is None],
                max_total=self.node.settings.batch_max_bytes,
            )
        )
        return [c.envelope if c.envelope is not None else next(read) for c in claims]

    def _body(self, claim: outbox.Claim) -> Iterator[bytes]:
        """The stored envelope, renewing our lease as it streams so a big upload is not taken over."""
        if claim.envelope is not None:  # handed over: small, in memory
            yield claim.envelope
            return
        sent_since_renewal = 0
        for chunk in read_blob(self.node.engine, claim.blob_id):
            yield chunk
            sent_since_renewal += len(chunk)
            if sent_since_renewal >= RENEW_EVERY_BYTES:
                sent_since_renewal = 0
                with session_scope(self.node.engine) as s:
                    outbox.extend_lease(
                        s,
                        claim.outbox_id,
                        self.worker_id,
                        self.node.clock(),
                        self.node.settings.delivery_lease_seconds,
                    )

    def _settle(self, claims: list[outbox.Claim], answers: list[tuple[int, Any]]) -> list[str]:
        """Record the peer's answers (HTTP status, JSON body) to ``claims``: the receipts through the node's
        group committer (``Node.record_receipts``), in one transaction with whatever else it is storing."""
        receipted: list[tuple[outbox.Claim, bytes, protocol.Receipt]] = []
        outcomes: dict[int, str] = {}
        for claim, (status, body) in zip(claims, answers, strict=True):
            checked = self._verified_receipt(claim, status, body)
            if isinstance(checked, str):
                outcomes[claim.outbox_id] = self._failed(claim, checked)
            else:
                receipted.append((claim, *checked))
        if receipted:  # stored with whatever else the node stores now: one transaction (Node._store_group)
            now = self.node.record_receipts(receipted)
            for claim, _, receipt in receipted:
                observe_delivery(self.node, claim.peer, claim.created_at, now)
                outcomes[claim.outbox_id] = "delivered" if receipt.accepted else "rejected"
        return [outcomes[c.outbox_id] for c in claims]

    def _verified_receipt(
        self, claim: outbox.Claim, status: int, body: Any
    ) -> tuple[bytes, protocol.Receipt] | str:
        """The receipt in a peer's answer, verified against its bundle and our envelope; else why not."""
        if status >= 500:
            return f"peer answered HTTP {status}"
        try:
            receipt_bytes = protocol.Signed.from_json(body["receipt"], what="receipt").to_bytes()
            on_receipt(
                self.node, claim.peer, receipt_bytes
            )  # the peer may have rotated its keys or been down
            receipt = protocol.verify_receipt(
                receipt_bytes,
                self.node.peer(claim.peer),
                envelope_sha256=bytes.fromhex(claim.envelope_sha256),
                message_id=claim.message_id,
                sender=self.node.party,
            )
        except (ValueError, KeyError, TypeError, ProlinkError) as exc:
            code = getattr(exc, "code", "receipt.missing")
            return f"HTTP {status} without a valid receipt ({code})"
        return receipt_bytes, receipt

    def _failed(self, claim: outbox.Claim, error: str) -> str:
        return self._failed_many([claim], error)[0]

    def _failed_many(self, claims: list[outbox.Claim], error: str) -> list[str]:
        """One failed attempt for each of ``claims`` (one transaction); the new state of each."""
        now = self.node.clock()
        states: list[str] = []
        with session_scope(self.node.engine) as s:
            for claim in claims:
                state = outbox.mark_failed(
                    s, claim.outbox_id, error, now, self.node.settings, worker_id=self.worker_id
                )
                states.append(state or "stale")
            record_events(
                s,
                [
                    event_entry(
                        now,
                        "delivery.failed",
                        state,
                        party=claim.peer,
                        object_id=claim.message_id,
                        attempt=claim.attempts,
                        error=error[:300],
                    )
                    for claim, state in zip(claims, states, strict=True)
                ],
            )
        return states


def _log_batch(peer: str, claims: list[outbox.Claim], outcomes: list[str], **more: Any) -> None:
    """A batch's line, once its outcomes are committed: each message by id with its outcome (``queued``
    again, ``parked``, ``delivered``...), as ``delivery_attempt`` for one sent alone, so that an operator
    can follow a message through the log."""
    log.info(
        "delivery_batch",
        peer=peer,
        envelopes=len(claims),
        delivered=outcomes.count("delivered"),
        rejected=outcomes.count("rejected"),
        messages=dict(zip((c.message_id for c in claims), outcomes, strict=True)),
        **more,
    )


def _json_or_none(response: httpx.Response) -> Any:
    """The peer's answer as JSON (``protocol.read_json``), or None: not JSON, or nested deeper than the
    parser goes (then each envelope gets a failed attempt, not an error the attempt escapes)."""
    try:
        return protocol.read_json(response.content)
    except ValueError:
        return None


def _status_of(answer: dict[str, Any]) -> int:
    status = answer.get("http_status")
    return status if isinstance(status, int) else 502

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

import threading
from concurrent.futures import ThreadPoolExecutor
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import structlog

import protocol
from keys import client_ssl_context
from protocol import ProlinkError
from service import outbox
from service.admin import hold_if_suspended, on_receipt
from service.blobs import read_blob
from service.db import session_scope
from service.metrics import observe_delivery
from service.node import Node, record_event
from service.peer_api import ENVELOPE_MEDIA_TYPE

log = structlog.get_logger("prolink.worker")

CLAIM_BATCH = 16
RENEW_EVERY_BYTES = 8 * 1024 * 1024


class DeliveryWorker:
    """Runs in a thread beside the web servers of ``prolink serve``."""

    def __init__(self, node: Node, worker_id: str | None = None) -> None:
        self.node = node
        self.worker_id = worker_id or f"{node.party}-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._clients: dict[tuple[str, int], httpx.Client] = {}
        self._clients_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=node.settings.delivery_concurrency,
                                        thread_name_prefix=f"deliver-{node.party}")

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"delivery-{self.worker_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients.values():
            client.close()

    def wake(self) -> None:
        """Something was queued: look at the outbox now instead of at the next poll."""
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad round (e.g. database down)
                log.error("delivery_round_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                worked = 0
            if not worked:
                self._wake.wait(self.node.settings.worker_poll_seconds)
                self._wake.clear()

    def run_once(self) -> int:
        claims = outbox.claim(self.node.engine, self.worker_id, self.node.clock(),
                              max(CLAIM_BATCH, self.node.settings.delivery_concurrency),
                              self.node.settings.delivery_lease_seconds)
        if len(claims) <= 1:
            for claim in claims:
                self.deliver(claim)
        else:
            # Deliveries of one claim batch go out in parallel; the outbox never hands out two
            # messages of one thread at once, so the order within a thread is kept.
            list(self._pool.map(self.deliver, claims))
        return len(claims)

    # --- one delivery ---------------------------------------------------------

    def _client(self, party: str) -> tuple[httpx.Client, str]:
        trusted = self.node.peer(party)
        key = (party, trusted.bundle.version)
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                ctx = client_ssl_context(self.node.identity, trusted.bundle.tls_ca_pem,
                                         allow_tls12=self.node.settings.allow_tls12)
                limits = httpx.Limits(max_connections=self.node.settings.delivery_concurrency)
                client = httpx.Client(verify=ctx, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits)
                self._clients[key] = client
        return client, trusted.bundle.endpoint.rstrip("/") + "/v1/envelopes"

    def deliver(self, claim: outbox.Claim) -> str:
        """Try one delivery; returns the outcome ('delivered', 'rejected', 'queued' or 'parked')."""
        node = self.node
        if hold_if_suspended(node, claim, self.worker_id):  # suspended since the claim: nothing is sent
            return "held"
        try:
            client, url = self._client(claim.peer)
            response = client.post(url, content=self._body(claim),
                                    headers={"content-type": ENVELOPE_MEDIA_TYPE,
                                             "content-length": str(claim.envelope_size)})
            outcome = self._settle(claim, response)
        except (httpx.HTTPError, OSError) as exc:
            outcome = self._failed(claim, f"transport: {type(exc).__name__}: {exc}"[:500])
        except ProlinkError as exc:
            outcome = self._failed(claim, f"{exc.code}: {exc.message}")
        log.info("delivery_attempt", message_id=claim.message_id, peer=claim.peer, attempt=claim.attempts,
                 outcome=outcome)
        return outcome

    def _body(self, claim: outbox.Claim) -> Iterator[bytes]:
        """The stored envelope, renewing our lease as it streams so a big upload is not taken over."""
        sent_since_renewal = 0
        for chunk in read_blob(self.node.engine, claim.blob_id):
            yield chunk
            sent_since_renewal += len(chunk)
            if sent_since_renewal >= RENEW_EVERY_BYTES:
                sent_since_renewal = 0
                with session_scope(self.node.engine) as s:
                    outbox.extend_lease(s, claim.outbox_id, self.worker_id, self.node.clock(),
                                        self.node.settings.delivery_lease_seconds)

    def _settle(self, claim: outbox.Claim, response: httpx.Response) -> str:
        if response.status_code >= 500:
            return self._failed(claim, f"peer answered HTTP {response.status_code}")
        try:
            body: Any = response.json()
            receipt_bytes = protocol.Signed.from_json(body["receipt"], what="receipt").to_bytes()
            on_receipt(self.node, claim.peer, receipt_bytes)  # the peer may have rotated its keys, or been down
            receipt = protocol.verify_receipt(receipt_bytes, self.node.peer(claim.peer),
                                              envelope_sha256=bytes.fromhex(claim.envelope_sha256),
                                              message_id=claim.message_id, sender=self.node.party)
        except (ValueError, KeyError, TypeError, ProlinkError) as exc:
            code = getattr(exc, "code", "receipt.missing")
            return self._failed(claim, f"HTTP {response.status_code} without a valid receipt ({code})")
        now = self.node.clock()
        with session_scope(self.node.engine) as s:
            outbox.mark_delivered(s, claim.outbox_id, now, receipt=receipt_bytes, receipt_status=receipt.status,
                                  receipt_verified=True)
            record_event(s, now, "receipt.received", receipt.status, party=claim.peer, object_id=claim.message_id,
                         envelope_sha256=claim.envelope_sha256, reason_code=receipt.reason_code)
        observe_delivery(self.node, claim.peer, claim.message_id, now)
        return "delivered" if receipt.accepted else "rejected"

    def _failed(self, claim: outbox.Claim, error: str) -> str:
        now = self.node.clock()
        with session_scope(self.node.engine) as s:
            state = outbox.mark_failed(s, claim.outbox_id, error, now, self.node.settings,
                                       worker_id=self.worker_id)
            record_event(s, now, "delivery.failed", state or "stale", party=claim.peer, object_id=claim.message_id,
                         attempt=claim.attempts, error=error[:300])
        return state or "stale"

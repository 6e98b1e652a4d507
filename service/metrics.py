"""Prometheus metrics of one node, served at ``/metrics`` on the internal port.

Most values are read from the database at scrape time, so they are the same
whichever replica is scraped and survive restarts: messages and outbox rows by
state, queue depth per peer, overdue requests and originals, the age of the
last cosigned audit log head, and counters derived from the append-only audit
events (failed delivery attempts, i.e. retries; deliveries rejected, by code).
The delivery latency histogram is observed in-process by the delivery worker
(``observe_delivery``) and starts again from zero when the process restarts,
as Prometheus counters may.

Never: a label value taken from content; only Party codes, states and codes.

FastAPI's own OpenTelemetry instrumentation is off in both APIs (``NO_TELEMETRY``):
it would look for a configured exporter on every request, and an operator's
``OTEL_*`` environment must not start sending request data (paths carry message
ids) anywhere.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import col

from service.admin_models import PeerAdmin
from service.case_models import Original
from service.db import session_scope
from service.models import MESSAGE_STATUSES, OUTBOX_STATES, Event, Message, Outbox, Peer
from service.node import Node

#: ``FastAPI(telemetry=...)``, a ``TelemetryConfig``: none of FastAPI's native OpenTelemetry (see above).
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}

__all__ = ["CONTENT_TYPE_LATEST", "observe_delivery", "render"]

#: Delivery latency buckets (seconds from sealing to a verified receipt): loopback to a peer down for days.
LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6 * 3600.0,
    24 * 3600.0,
    3 * 24 * 3600.0,
)


class _DatabaseCollector(Collector):
    """Reads the node's state from its database at every scrape."""

    def __init__(self, node: Node) -> None:
        self._node = weakref.ref(node)

    def collect(self) -> Iterator[Metric]:
        node = self._node()
        if node is None:
            return
        now = node.clock()
        today = now.date()
        with session_scope(node.engine, readonly=True) as s:
            messages = s.execute(
                select(Message.direction, Message.status, func.count()).group_by(
                    Message.direction, Message.status
                )
            ).all()
            boxes = s.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all()
            depth = s.execute(
                select(Outbox.peer, func.count())
                .where(col(Outbox.state).in_(("queued", "in_flight")))
                .group_by(Outbox.peer)
            ).all()
            oldest = s.execute(
                select(func.min(Outbox.created_at)).where(col(Outbox.state).in_(("queued", "in_flight")))
            ).scalar_one_or_none()
            peers = s.execute(select(Peer.party, Peer.status, Peer.bundle_version)).all()
            acked = dict(s.execute(select(PeerAdmin.party, PeerAdmin.acked_version)).all())
            retries = s.execute(
                select(Event.party, func.count()).where(Event.type == "delivery.failed").group_by(Event.party)
            ).all()
            rejected_in = s.execute(
                select(Event.outcome, func.count())
                .where(Event.type == "message.rejected")
                .group_by(Event.outcome)
            ).all()
            rejected_out = (
                s.execute(
                    select(Event.detail).where(Event.type == "receipt.received", Event.outcome == "rejected")
                )
                .scalars()
                .all()
            )
            originals = s.execute(
                select(Original.owed_by, func.count())
                .where(col(Original.received_on).is_(None), col(Original.due_on) < today)
                .group_by(Original.owed_by)
            ).all()
            from service.admin import overdue_requests

            overdue = overdue_requests(s, node.party, today)
            cosigned_at = _last_cosigned_head(s)

        g = GaugeMetricFamily(
            "prolink_messages", "Messages by direction and status.", labels=["direction", "status"]
        )
        counts = {(d, st): n for d, st, n in messages}
        expected = {("out", st) for st in MESSAGE_STATUSES if st != "received"} | {("in", "received")}
        for direction, status in sorted(expected | set(counts)):
            g.add_metric([direction, status], counts.get((direction, status), 0))
        yield g

        box = dict(boxes)
        g = GaugeMetricFamily(
            "prolink_outbox_messages", "Outgoing deliveries by outbox state.", labels=["state"]
        )
        for state in OUTBOX_STATES:
            g.add_metric([state], box.get(state, 0))
        yield g
        yield GaugeMetricFamily(
            "prolink_outbox_parked", "Deliveries parked for an operator.", value=box.get("parked", 0)
        )

        g = GaugeMetricFamily(
            "prolink_outbox_queue_depth", "Deliveries queued or in flight, per peer.", labels=["peer"]
        )
        per_peer = dict(depth)
        for party, _status, _version in peers:
            g.add_metric([party], per_peer.get(party, 0))
        yield g
        yield GaugeMetricFamily(
            "prolink_outbox_oldest_queued_age_seconds",
            "Age of the oldest delivery still queued or in flight (0 if none).",
            value=0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()),
        )

        g = GaugeMetricFamily(
            "prolink_peer_suspended",
            "1 if the peer is suspended (nothing sent or accepted).",
            labels=["peer"],
        )
        v = GaugeMetricFamily(
            "prolink_peer_bundle_version", "Version of the peer's bundle we hold.", labels=["peer"]
        )
        a = GaugeMetricFamily(
            "prolink_peer_has_our_bundle",
            "1 if the peer confirmed holding our current bundle version.",
            labels=["peer"],
        )
        ours = node.identity.bundle_version
        for party, status, version in peers:
            g.add_metric([party], 1 if status != "active" else 0)
            v.add_metric([party], version)
            a.add_metric([party], 1 if acked.get(party) == ours else 0)
        yield g
        yield v
        yield a

        c = CounterMetricFamily(
            "prolink_delivery_retries",
            "Failed delivery attempts (each is retried or parked).",
            labels=["peer"],
        )
        for party, n in retries:
            c.add_metric([party or ""], n)
        yield c

        c = CounterMetricFamily(
            "prolink_rejected_deliveries",
            "Deliveries refused, by code: 'in' = refused by this node, 'out' = our messages "
            "refused by the peer (signed rejection receipts).",
            labels=["direction", "code"],
        )
        for code, n in rejected_in:
            c.add_metric(["in", code], n)
        out_codes: dict[str, int] = {}
        for detail in rejected_out:
            code = str((detail or {}).get("reason_code") or "unknown")
            out_codes[code] = out_codes.get(code, 0) + 1
        for code, n in sorted(out_codes.items()):
            c.add_metric(["out", code], n)
        yield c

        g = GaugeMetricFamily(
            "prolink_requests_overdue",
            "Open requests past their expected execution date (Art. 4 d), by our role.",
            labels=["our_role"],
        )
        for role, n in overdue.items():
            g.add_metric([role], n)
        yield g
        g = GaugeMetricFamily(
            "prolink_originals_overdue",
            "Paper originals owed by post (Art. 4) past due, by who owes them.",
            labels=["owed_by"],
        )
        owed = dict(originals)
        g.add_metric(["us"], owed.get(node.party, 0))
        g.add_metric(["peer"], sum(n for p, n in owed.items() if p != node.party))
        yield g

        if cosigned_at is not None:
            yield GaugeMetricFamily(
                "prolink_audit_cosigned_head_age_seconds",
                "Age of the newest audit log head a peer has cosigned.",
                value=max(0.0, (now - cosigned_at).total_seconds()),
            )

        expiry = _signing_key_expiry(node, now)
        if expiry is not None:
            yield GaugeMetricFamily(
                "prolink_node_signing_key_expires_in_seconds",
                "Time left before the node signing key in use expires: rotate well before.",
                value=expiry,
            )


def _last_cosigned_head(s: object) -> datetime | None:
    """When the newest of our audit heads that a peer cosigned was signed; None without an audit log."""
    try:
        from service.models import AuditCosignature, AuditHead  # type: ignore[attr-defined]
    except ImportError:
        return None
    value: datetime | None = s.execute(  # type: ignore[attr-defined]
        select(AuditHead.signed_at)
        .join(AuditCosignature, AuditCosignature.head_size == AuditHead.size)
        .order_by(AuditHead.size.desc())
        .limit(1)
    ).scalar_one_or_none()
    return value


def _signing_key_expiry(node: Node, now: datetime) -> float | None:
    key_id = node.identity.node_keys.signing.key_id
    for key, validity in node.identity.trusted_self().bundle.signing_keys:
        if key.key_id == key_id and validity.valid_until is not None:
            return (validity.valid_until - now).total_seconds()
    return None


class NodeMetrics:
    """One node's registry: the database collector plus the in-process latency histogram."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DatabaseCollector(node))
        self.latency = Histogram(
            "prolink_delivery_latency_seconds",
            "Time from sealing a message to the peer's verified receipt.",
            ["peer"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


_metrics: weakref.WeakKeyDictionary[Node, NodeMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def for_node(node: Node) -> NodeMetrics:
    with _lock:
        m = _metrics.get(node)
        if m is None:
            m = _metrics[node] = NodeMetrics(node)
        return m


def observe_delivery(node: Node, peer: str, created_at: datetime | None, now: datetime) -> None:
    """Delivery worker hook: a verified receipt arrived at ``now`` for a message sealed at ``created_at``."""
    if created_at is None:
        return
    try:
        if created_at.tzinfo is None:  # SQLite hands back naive UTC
            created_at = created_at.replace(tzinfo=UTC)
        for_node(node).latency.labels(peer).observe(max(0.0, (now - created_at).total_seconds()))
    except Exception:  # noqa: BLE001, S110 - metrics must never break a delivery
        pass


def render(node: Node) -> bytes:
    return generate_latest(for_node(node).registry)

"""What an operator can do to a running node, and the machinery that keeps keys and peers in step.

Called by the admin API (``service.admin_api``) and by its CLI twins
(``service.admin_cli``). Each action runs in one transaction and records an
audit event (``record_event``) in it, with the operator as actor; refusals are
``ServiceError`` with a stable code.

Key rotation without downtime (``KeySync``): the node reloads its identity when
``bundle.json`` gets a new version, first *decrypting* with the new keys while
still *signing* with the old one (which the peers know), pushes the new
root-signed bundle to every active peer (``POST /v1/bundle``, verified there
against the root the peer already pins), and only then signs with the new key.
A peer that meets a signing key it does not know (envelope or receipt) fetches
``GET /v1/bundle`` before deciding (``ensure_signing_key``). Pushes that fail are
retried with backoff until each peer has confirmed our current version. New
peer bundles also extend the live TLS server context's trusted CAs.

Never: show or record a token or passphrase, read message content, or send
anything to a suspended peer.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog
from sqlalchemy import func, select, update
from sqlmodel import Session, col

import protocol
from keys import (
    add_signatory,
    client_ssl_context,
    list_signatories,
    load_identity,
    recorded_bundle_version,
    revoke_key,
    rotate_node_keys,
)
from protocol import (
    CONFIDENTIALITY_LEVELS,
    DIRECTIONS,
    FORMS,
    NodeKeys,
    ProlinkError,
    TrustedParty,
    TrustError,
    agreement_state_on,
)
from protocol._lifecycle import NOTICE_PERIOD_DAYS
from service import outbox
from service.admin_models import AgreementConfigVersion, PeerAdmin
from service.auth import hash_token, new_token
from service.background import BackgroundLoop
from service.case_models import Original, TerminationNotice, Thread
from service.cases import agreement_ends_on, termination_received_on
from service.db import session_scope, unwrapped_reads
from service.errors import ServiceError, peer_error_code
from service.models import OUTBOX_STATES, USER_ROLES, Message, Outbox, Peer, User
from service.node import Node, record_event

log = structlog.get_logger("prolink.admin")

BUNDLE_MEDIA_TYPE = "application/vnd.prolink.bundle+json"
MAX_BUNDLE_BYTES = 1024 * 1024
PUSH_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
#: Seconds between pushes of our bundle to a peer that has not confirmed it yet.
PUSH_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: A peer's bundle is fetched again for the same unknown key at most this often.
REFETCH_INTERVAL = 2.0
#: Seconds before the old signing key's end at which a rotation stops using it, whatever the pushes' state.
STAGING_MARGIN = 1.0
#: At most this long (seconds) does a rotation wait for pushes before signing with the new key.
MAX_STAGING = 60.0
#: How long a peer reachability answer is reused (``/readyz`` may be polled often).
PING_CACHE_SECONDS = 5.0

AGREEMENT_SIGNED_ON = date(2014, 7, 21)
AGREEMENT_REFERENCE = "Соглашение о сотрудничестве от 21 июля 2014 года"


def _iso(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


def _not_found(what: str, code: str) -> ServiceError:
    return ServiceError(f"no {what}", code=code, status=404)


# =====================================================================================
# passphrases
# =====================================================================================


def root_key_encrypted(data_dir: Path) -> bool:
    """Whether the root key file is passphrase-encrypted (raises ``keys.root_offline`` if it is absent)."""
    kd = Path(data_dir) / "keys"
    state = json.loads((kd / "identity.json").read_text("utf-8"))
    path = kd / state["root"]["file"]
    try:
        header = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ServiceError(
            f"the root key {path} is not present (kept offline?); it is needed here",
            code="keys.root_offline",
            status=409,
        ) from None
    return bool(header.get("encrypted"))


def root_passphrase(node: Node, given: str | None, *, writes_keys: bool = False) -> bytes | None:
    """The passphrase to use for an operation on the root key.

    Where the root key is encrypted the operator must give its passphrase with
    the request (the node's own copy is not enough: that is the point). Where the
    operation also writes new private keys the node must load later, the
    passphrase must be the one the node runs with, or the node could not load them.
    """
    if not root_key_encrypted(node.settings.data_dir):
        return None
    if not given:
        raise ServiceError(
            "the root key is encrypted: give its passphrase",
            code="keys.passphrase_required",
            status=400,
            field="passphrase",
        )
    passphrase = given.encode("utf-8")
    configured = node.settings.key_passphrase()
    if writes_keys and configured is not None and configured != passphrase:
        raise ServiceError(
            "new keys would be encrypted with a passphrase the node does not run with",
            code="keys.wrong_passphrase",
            status=403,
            field="passphrase",
        )
    return passphrase


def _key_error(exc: ProlinkError) -> ServiceError:
    """Key-file errors from ``keys`` with the status an API client expects."""
    status = {
        "keys.wrong_passphrase": 403,
        "keys.passphrase_required": 400,
        "keys.root_offline": 409,
        "keys.current_key": 409,
        "keys.already_revoked": 409,
        "keys.unknown_key": 404,
    }.get(exc.code, 400)
    return ServiceError(exc.message, code=exc.code, status=status)


# =====================================================================================
# peers
# =====================================================================================


def _peer_row(s: Session, party: str, *, lock: bool = False) -> Peer:
    row = s.get(Peer, party, with_for_update=lock)
    if row is None:
        raise _not_found(f"peer {party}", "peer.not_found")
    return row


def _admin_row(s: Session, party: str) -> PeerAdmin:
    row = s.get(PeerAdmin, party)
    if row is None:
        row = PeerAdmin(party=party)
        s.add(row)
    return row


def _forget_peer(node: Node, party: str) -> None:
    """Drop the node's cached copy of a peer's facts after changing them (other processes: within seconds)."""
    forget = getattr(node, "peers_changed", None)
    if forget is not None:
        forget(party)


def peer_is_active(node: Node, party: str) -> bool:
    """Whether ``party`` is an active peer, as stored now (not as this process cached it): asked before every
    delivery to it. One statement, so with no transaction around it (on PostgreSQL one round trip, not a
    BEGIN, the read and a ROLLBACK)."""
    with unwrapped_reads(node.engine).connect() as conn:
        status = conn.execute(select(Peer.status).where(Peer.party == party)).scalar_one_or_none()
    return status == "active"


def log_heads(s: Session, party: str) -> dict[str, Any] | None:
    """The audit log heads exchanged with ``party``, or None while the node has no audit log tables."""
    try:
        from service.models import AuditCosignature, AuditHead, AuditPeerHead  # type: ignore[attr-defined]
    except ImportError:
        return None
    theirs = (
        s.execute(
            select(AuditPeerHead)
            .where(AuditPeerHead.party == party)
            .order_by(AuditPeerHead.size.desc())
            .limit(1)
        )
        .scalars()
        .first()
    )
    ours = s.execute(
        select(AuditHead, AuditCosignature)
        .join(AuditCosignature, AuditCosignature.head_size == AuditHead.size)
        .where(AuditCosignature.party == party)
        .order_by(AuditHead.size.desc())
        .limit(1)
    ).first()
    return {
        "peer_log": None
        if theirs is None
        else {"size": theirs.size, "root": bytes(theirs.root).hex(), "cosigned_at": _iso(theirs.accepted_at)},
        "our_log_cosigned": None
        if ours is None
        else {
            "size": ours[0].size,
            "root": bytes(ours[0].root).hex(),
            "signed_at": _iso(ours[0].signed_at),
            "cosigned_at": _iso(ours[1].received_at),
        },
    }


def _bundle_view(trusted: TrustedParty, at: datetime) -> dict[str, Any]:
    b = trusted.bundle

    def keys(entries: Iterable[tuple[Any, protocol.KeyValidity]]) -> list[dict[str, Any]]:
        out = []
        for key, v in entries:
            rev = trusted.revocation_of(key.key_id)
            out.append(
                {
                    "key_id": key.key_id,
                    "valid_from": _iso(v.valid_from),
                    "valid_until": _iso(v.valid_until),
                    "revoked_at": _iso(rev.revoked_at) if rev else None,
                    "valid_now": v.valid_from <= at
                    and (v.valid_until is None or at < v.valid_until)
                    and (rev is None or at < rev.revoked_at),
                }
            )
        return out

    return {
        "version": b.version,
        "issued_at": _iso(b.issued_at),
        "endpoint": b.endpoint,
        "signing_keys": keys(b.signing_keys),
        "encryption_keys": keys(b.encryption_keys),
        "revocations": [
            {"key_id": r.key_id, "revoked_at": _iso(r.revoked_at), "reason": r.reason} for r in b.revocations
        ],
    }


def list_peers(node: Node, party: str | None = None) -> list[dict[str, Any]]:
    """Peers with bundle, delivery and queue facts (and audit log heads where the node keeps them)."""
    now = node.clock()
    with session_scope(node.engine, readonly=True) as s:
        query = select(Peer).order_by(Peer.party)
        if party is not None:
            query = query.where(Peer.party == party)
        peers = s.execute(query).scalars().all()
        if party is not None and not peers:
            raise _not_found(f"peer {party}", "peer.not_found")
        admin = {r.party: r for r in s.execute(select(PeerAdmin)).scalars()}
        delivered = dict(
            s.execute(
                select(Message.peer, func.max(Message.delivered_at))
                .where(Message.direction == "out", Message.delivered_at.is_not(None))  # type: ignore[union-attr]
                .group_by(Message.peer)
            ).all()
        )
        received = dict(
            s.execute(
                select(Message.peer, func.max(Message.created_at))
                .where(Message.direction == "in")
                .group_by(Message.peer)
            ).all()
        )
        queues: dict[str, dict[str, int]] = {}
        for peer, state, n in s.execute(
            select(Outbox.peer, Outbox.state, func.count())
            .where(Outbox.state != "delivered")
            .group_by(Outbox.peer, Outbox.state)
        ).all():
            queues.setdefault(peer, {})[state] = n
        heads = {p.party: log_heads(s, p.party) for p in peers}
    views = []
    for p in peers:
        a = admin.get(p.party)
        q = queues.get(p.party, {})
        trusted = node.peer(p.party, active_only=False)
        views.append(
            {
                "party": p.party,
                "name": p.name,
                "status": p.status,
                "endpoint": p.endpoint,
                "fingerprint": p.fingerprint,
                "bundle_version": p.bundle_version,
                "added_at": _iso(p.added_at),
                "suspended_at": _iso(a.suspended_at) if a else None,
                "suspended_reason": a.suspended_reason if a else None,
                "last_successful_delivery": _iso(delivered.get(p.party)),
                "last_received": _iso(received.get(p.party)),
                "queue_depth": q.get("queued", 0) + q.get("in_flight", 0),
                "queue": {
                    "queued": q.get("queued", 0),
                    "in_flight": q.get("in_flight", 0),
                    "parked": q.get("parked", 0),
                },
                "our_bundle": {
                    "version": node.identity.bundle_version,
                    "acked_version": a.acked_version if a else None,
                    "acked_at": _iso(a.acked_at) if a else None,
                    "push_error": a.push_error if a else None,
                },
                "log_head": heads[p.party],
                "bundle": _bundle_view(trusted, now),
            }
        )
    return views


def set_peer_suspended(
    node: Node, party: str, suspended: bool, actor: str, reason: str | None = None
) -> dict[str, Any]:
    """Suspend (nothing sent, nothing accepted) or resume a peer. Queued messages wait; none fails."""
    now = node.clock()
    with session_scope(node.engine) as s:
        row = _peer_row(s, party, lock=True)
        if suspended and row.status == "suspended":
            raise ServiceError(f"{party} is already suspended", code="peer.already_suspended", status=409)
        if not suspended and row.status != "suspended":
            raise ServiceError(f"{party} is not suspended", code="peer.not_suspended", status=409)
        row.status = "suspended" if suspended else "active"
        s.add(row)
        a = _admin_row(s, party)
        a.suspended_at, a.suspended_reason = (now, reason) if suspended else (None, None)
        s.add(a)
        s.flush()
        record_event(
            s,
            now,
            "peer.suspended" if suspended else "peer.resumed",
            "ok",
            actor=actor,
            party=party,
            object_id=party,
            **({"reason": reason} if reason else {}),
        )
    _forget_peer(node, party)
    if not suspended:
        key_sync(node).wake()
    return list_peers(node, party)[0]


def _store_peer_bundle(node: Node, new: TrustedParty, actor: str, source: str) -> str:
    """Replace a known peer's bundle by a newer version of the same root. Returns 'updated' or 'unchanged'."""
    now = node.clock()
    with session_scope(node.engine) as s:
        row = _peer_row(s, new.party, lock=True)
        if row.fingerprint != new.fingerprint:
            raise ServiceError(
                f"the bundle's root key is not {new.party}'s; a new root needs a new introduction",
                code="trust.fingerprint_mismatch",
                status=409,
            )
        if new.raw == row.bundle:
            return "unchanged"
        if new.bundle.version <= row.bundle_version:
            raise ServiceError(
                f"{new.party} bundle version {new.bundle.version} is not newer than {row.bundle_version}",
                code="trust.bundle_rollback",
                status=409,
            )
        before = row.bundle_version
        row.bundle, row.bundle_version = new.raw, new.bundle.version
        row.endpoint, row.name = new.bundle.endpoint, new.bundle.name
        s.add(row)
        s.flush()
        record_event(
            s,
            now,
            "peer.bundle_updated",
            "ok",
            actor=actor,
            party=new.party,
            object_id=new.party,
            source=source,
            bundle_version_before=before,
            bundle_version=new.bundle.version,
        )
    _forget_peer(node, new.party)
    log.info("peer_bundle_updated", party=new.party, version=new.bundle.version, source=source)
    key_sync(node).peers_changed()
    return "updated"


def import_peer_bundle(node: Node, party: str, data: bytes, fingerprint: str, actor: str) -> dict[str, Any]:
    """An operator imports a new bundle version of a known peer, checked against the fingerprint typed in."""
    new = protocol.verify_bundle(data, expected_fingerprint=fingerprint)
    if new.party != party:
        raise ServiceError(
            f"the bundle is {new.party}'s, not {party}'s", code="trust.wrong_party", status=409
        )
    outcome = _store_peer_bundle(node, new, actor, "operator")
    return {"party": party, "bundle_version": new.bundle.version, "outcome": outcome}


def accept_pushed_bundle(node: Node, party: str, data: bytes) -> dict[str, Any]:
    """``POST /v1/bundle`` from ``party`` (mutual TLS): a newer bundle under the root we pin for it."""
    with session_scope(node.engine, readonly=True) as s:
        row = s.get(Peer, party)
        if row is None:
            raise ServiceError(f"{party} is not a peer of this node", code="peer.unknown", status=403)
        if row.status != "active":
            raise ServiceError(f"{party} is suspended here", code="peer.suspended", status=403)
    current = node.peer(party)
    new = protocol.verify_bundle(data, pinned_root=current.root)
    if new.party != party:
        raise ServiceError(
            f"the bundle is {new.party}'s, not {party}'s", code="trust.wrong_party", status=409
        )
    outcome = _store_peer_bundle(node, new, f"peer:{party}", "push")
    return {"party": party, "version": new.bundle.version, "status": outcome}


# --- talking to peers ---------------------------------------------------------------------

_clients: weakref.WeakKeyDictionary[Node, dict[tuple[str, int], httpx.Client]] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def _client(node: Node, trusted: TrustedParty) -> httpx.Client:
    """An mTLS client to ``trusted``'s peer API (one per peer bundle version)."""
    with _clients_lock:
        per_node = _clients.setdefault(node, {})
        key = (trusted.party, trusted.bundle.version)
        client = per_node.get(key)
        if client is None:
            ctx = client_ssl_context(
                node.identity, trusted.bundle.tls_ca_pem, allow_tls12=node.settings.allow_tls12
            )
            client = httpx.Client(verify=ctx, timeout=PUSH_TIMEOUT)
            per_node[key] = client
        return client


def _url(trusted: TrustedParty, path: str) -> str:
    return trusted.bundle.endpoint.rstrip("/") + path


def fetch_peer_bundle(node: Node, party: str) -> TrustedParty:
    """Fetch ``party``'s current bundle from its peer API and keep it if it is newer (same root)."""
    current = node.peer(party)
    try:
        response = _client(node, current).get(_url(current, "/v1/bundle"))
    except (httpx.HTTPError, OSError) as exc:
        raise ServiceError(
            f"{party}'s peer API cannot be reached ({type(exc).__name__})",
            code="peer.unreachable",
            status=502,
        ) from None
    if response.status_code != 200 or len(response.content) > MAX_BUNDLE_BYTES:
        raise ServiceError(
            f"{party} answered HTTP {response.status_code} for its bundle",
            code="peer.bundle_unavailable",
            status=502,
        )
    new = protocol.verify_bundle(response.content, pinned_root=current.root)
    if new.party != party:
        raise TrustError(f"{party} served {new.party}'s bundle", code="trust.wrong_party")
    if new.bundle.version > current.bundle.version:
        _store_peer_bundle(node, new, "node", "fetch")
    return node.peer(party)


_refetched: dict[tuple[int, str, str], float] = {}
_fetch_locks: dict[tuple[int, str], threading.Lock] = {}
_refetch_lock = threading.Lock()


def _has_signing_key(trusted: TrustedParty, key_id: str) -> bool:
    return any(k.key_id == key_id for k, _ in trusted.bundle.signing_keys)


def _may_refetch(node: Node, party: str, key_id: str) -> bool:
    key = (id(node), party, key_id)
    with _refetch_lock:
        now = time.monotonic()
        last = _refetched.get(key)
        if last is not None and now - last < REFETCH_INTERVAL:
            return False
        if len(_refetched) > 1000:  # key ids a peer made up must not grow this without bound
            for stale in [k for k, t in _refetched.items() if now - t >= REFETCH_INTERVAL]:
                del _refetched[stale]
        _refetched[key] = now
        return True


def _fetch_lock(node: Node, party: str) -> threading.Lock:
    """One bundle fetch per peer at a time: concurrent deliveries wait for it instead of fetching again."""
    with _refetch_lock:
        return _fetch_locks.setdefault((id(node), party), threading.Lock())


def _with_key(node: Node, party: str, key_id: str) -> TrustedParty | None:
    """The peer's bundle if it names ``key_id`` (fetching it once when it does not), else None."""
    with _fetch_lock(node, party):
        current = node.peer(party)
        if _has_signing_key(current, key_id):
            return current  # another delivery fetched it while we waited
        if not _may_refetch(node, party, key_id):
            return None
        return fetch_peer_bundle(node, party)  # if it still lacks the key, verification rejects the envelope


def ensure_signing_key(node: Node, sender: TrustedParty, key_id: str) -> TrustedParty:
    """Before opening an envelope: if ``key_id`` is not in the sender's bundle we hold, fetch its bundle.

    Raises a ``ProlinkError`` (the delivery is refused without a receipt, so
    the sender retries) when the bundle cannot be fetched now; if the fetched
    bundle does not name the key either, the caller's verification rejects it.
    """
    if _has_signing_key(sender, key_id):
        return sender
    try:
        fresh = _with_key(node, sender.party, key_id)
    except (ProlinkError, httpx.HTTPError, OSError) as exc:
        log.warning(
            "peer_bundle_fetch_failed", party=sender.party, key_id=key_id, error_type=type(exc).__name__
        )
        raise TrustError(
            f"{sender.party} signing key {key_id} is unknown here and its bundle could not be "
            "fetched; try again",
            code="trust.bundle_refresh_failed",
        ) from None
    if fresh is None:
        raise TrustError(
            f"{sender.party} signing key {key_id} is unknown here; its bundle was fetched moments "
            "ago, try again",
            code="trust.bundle_refresh_pending",
        )
    return fresh


def on_receipt(node: Node, party: str, receipt: bytes) -> None:
    """Worker hook, before a receipt is verified: the peer answered.

    Fetch its bundle if the receipt names a key we do not know (it rotated), and
    if it has not confirmed our current bundle yet, push it now rather than at
    the next backoff step (it was probably down).
    """
    key_sync(node).peer_answered(party)
    try:
        key_id = protocol.Signed.from_bytes(receipt, what="receipt").key_id
        if _has_signing_key(node.peer(party), key_id):
            return
        _with_key(node, party, key_id)
    except (ProlinkError, httpx.HTTPError, OSError) as exc:
        log.warning("peer_bundle_fetch_failed", party=party, error_type=type(exc).__name__)


@dataclass
class _PingResult:
    at: float
    view: dict[str, Any]


_pings: weakref.WeakKeyDictionary[Node, dict[str, _PingResult]] = weakref.WeakKeyDictionary()


def peer_reachability(node: Node) -> dict[str, dict[str, Any]]:
    """Whether each active peer's API answers ``/v1/ping`` over mutual TLS (answers cached a few seconds)."""
    with session_scope(node.engine, readonly=True) as s:
        peers = s.execute(select(Peer.party, Peer.status).order_by(Peer.party)).all()
    cache = _pings.setdefault(node, {})
    out: dict[str, dict[str, Any]] = {}
    for party, status in peers:
        if status != "active":
            out[party] = {"status": status, "reachable": None}
            continue
        hit = cache.get(party)
        if hit is not None and time.monotonic() - hit.at < PING_CACHE_SECONDS:
            out[party] = hit.view
            continue
        started = time.monotonic()
        try:
            trusted = node.peer(party)
            r = _client(node, trusted).get(_url(trusted, "/v1/ping"), timeout=3.0)
            ok = r.status_code == 200 and protocol.read_json(r.content).get("party") == party
            view: dict[str, Any] = {
                "status": status,
                "reachable": ok,
                "latency_ms": round((time.monotonic() - started) * 1000, 1),
            }
            if not ok:
                view["error"] = f"HTTP {r.status_code}"
        except (httpx.HTTPError, OSError, ProlinkError, ValueError) as exc:
            view = {"status": status, "reachable": False, "error": type(exc).__name__}
        cache[party] = _PingResult(time.monotonic(), view)
        out[party] = view
    return out


# =====================================================================================
# keys: the sync that keeps a running node in step with its key files and peers' bundles
# =====================================================================================


def _bundle_file(node: Node) -> Path:
    return Path(node.settings.data_dir) / "keys" / "bundle.json"


class KeySync(BackgroundLoop):
    """Reloads the node identity after a rotation or revocation, pushes our bundle, extends TLS trust.

    One per node (``key_sync(node)``); ``prolink serve`` runs it in a thread and
    the admin API calls ``check`` directly so its answer reports the push.
    """

    def __init__(self, node: Node, interval: float = 1.0) -> None:
        super().__init__(f"keysync-{node.party}")
        self.node = node
        self._every = interval
        self._lock = threading.RLock()
        self._ssl_context: Any = None
        self._trusted_cas: set[tuple[str, int]] = set()
        self._bundle_stat: tuple[int, int] | None = None
        self._behind: tuple[tuple[int, int], int] | None = None  # (said once: ``reload_identity``)
        self._push_failures: dict[str, tuple[int, float]] = {}
        self._failure_logged: set[tuple[str, int]] = set()

    # --- lifecycle ------------------------------------------------------------------

    def attach_tls(self, ssl_context: Any) -> None:
        """The live server context of the peer listener: new peer CAs are added to it."""
        self._ssl_context = ssl_context

    failure_event = "key_sync_failed"

    def interval(self) -> float:
        return self._every

    def wake(self) -> None:
        self._push_failures.clear()
        super().wake()

    def peer_answered(self, party: str) -> None:
        """A peer we failed to push to is reachable again: try at once."""
        if party in self._push_failures:
            self._push_failures.pop(party, None)
            self._wake.set()

    def peers_changed(self) -> None:
        """A peer bundle was stored: trust its TLS CA now, and tell the loop."""
        try:
            self.refresh_tls()
        except Exception as exc:  # noqa: BLE001 - reported, and the loop tries again
            log.error("tls_trust_update_failed", error_type=type(exc).__name__, error=str(exc)[:200])
        self._wake.set()

    def round(self) -> bool:
        self.check()
        return False  # then wait: a rotation or a new peer wakes us

    # --- one round ----------------------------------------------------------------------

    def check(self, *, force_push: bool = False) -> dict[str, Any]:
        with self._lock:
            reloaded = self.reload_identity()
            self.refresh_tls()
            pushed = self.push_pending(force=force_push or reloaded)
            return {"reloaded": reloaded, "pushed": pushed}

    def reload_identity(self) -> bool:
        """If bundle.json holds a newer version than the node runs with, switch to it (module docstring)."""
        node = self.node
        path = _bundle_file(node)
        st = path.stat()
        stat = (st.st_mtime_ns, st.st_size)
        if stat == self._bundle_stat:
            return False
        trusted = protocol.verify_bundle(path.read_bytes(), pinned_root=node.identity.root_public)
        if trusted.bundle.version <= node.identity.bundle_version:
            self._bundle_stat = stat
            return False
        recorded = recorded_bundle_version(node.settings.data_dir)
        if recorded < trusted.bundle.version:
            # A rotation writes bundle.json first, then identity.json: we read between the two (or it
            # crashed between them). The bundle's stat is not recorded, so the next round reads both
            # again; no key is loaded until identity.json has caught up (each is a scrypt with a passphrase).
            if self._behind != (stat, recorded):
                self._behind = (stat, recorded)
                log.warning(
                    "identity_behind_bundle", bundle_version=trusted.bundle.version, identity_version=recorded
                )
            return False
        old = node.identity
        new = load_identity(node.settings.data_dir, passphrase=node.settings.key_passphrase())
        full = new.node_keys
        old_key = old.node_keys.signing
        now = node.clock()
        # Seconds the old signing key may still be used while the peers receive the new bundle: never up to
        # its very end, so nothing we sign in the meantime reaches a peer already expired.
        budget = (
            min(_usable_for(trusted, old_key.key_id, now) - STAGING_MARGIN, MAX_STAGING)
            if full.signing.key_id != old_key.key_id
            else 0.0
        )
        staged = budget > 0
        if staged:
            new.node_keys = NodeKeys(full.party, old_key, full.decryption)
        node.identity = new  # from here on, envelopes to our new encryption key open
        self._bundle_stat = stat
        log.info(
            "identity_reloaded", version=new.bundle_version, signing_key=full.signing.key_id, staged=staged
        )
        if staged:
            try:
                self.push_pending(force=True, budget=budget)
            finally:
                new.node_keys = full
        return True

    def refresh_tls(self) -> list[str]:
        """Add the TLS CA of every peer bundle not yet trusted by the live server context."""
        if self._ssl_context is None:
            return []
        with session_scope(self.node.engine, readonly=True) as s:
            rows = s.execute(select(Peer.party, Peer.bundle_version)).all()
        added = []
        for party, version in rows:
            if (party, version) in self._trusted_cas:
                continue
            pem = self.node.peer(party, active_only=False).bundle.tls_ca_pem
            self._ssl_context.load_verify_locations(cadata=pem)
            self._trusted_cas.add((party, version))
            added.append(party)
        return added

    def push_pending(self, *, force: bool = False, budget: float | None = None) -> dict[str, str]:
        """Send our bundle to every active peer that has not confirmed our current version.

        With ``budget`` (seconds), stop starting pushes once it is spent, and bound each by what is left.
        """
        started = time.monotonic()
        node = self.node
        version = node.identity.bundle_version
        with session_scope(node.engine, readonly=True) as s:
            peers = (
                s.execute(select(Peer.party).where(Peer.status == "active").order_by(Peer.party))
                .scalars()
                .all()
            )
            acked = {r.party: r.acked_version for r in s.execute(select(PeerAdmin)).scalars()}
        results: dict[str, str] = {}
        for party in peers:
            if acked.get(party) == version:
                continue
            failures, next_at = self._push_failures.get(party, (0, 0.0))
            if not force and time.monotonic() < next_at:
                results[party] = "waiting"
                continue
            timeout = None
            if budget is not None:
                timeout = budget - (time.monotonic() - started)
                if timeout <= 0.1:
                    results[party] = "skipped"
                    continue
            results[party] = self._push(party, version, failures, timeout)
        return results

    def _push(self, party: str, version: int, failures: int, timeout: float | None = None) -> str:
        node = self.node
        now = node.clock()
        error: str | None = None
        try:
            trusted = node.peer(party)
            r = _client(node, trusted).post(
                _url(trusted, "/v1/bundle"),
                content=node.identity.bundle_bytes(),
                headers={"content-type": BUNDLE_MEDIA_TYPE},
                timeout=PUSH_TIMEOUT
                if timeout is None
                else httpx.Timeout(min(10.0, timeout), connect=min(3.0, timeout)),
            )
            if r.status_code != 200:
                code = peer_error_code(r)
                error = f"HTTP {r.status_code} {code}"
            elif (held := protocol.read_json(r.content).get("version")) != version:
                error = f"peer holds version {held}"
        except (httpx.HTTPError, OSError, ProlinkError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        with session_scope(node.engine) as s:
            if s.get(Peer, party) is None:
                return "gone"
            a = _admin_row(s, party)
            a.push_attempted_at = now
            if error is None:
                a.acked_version, a.acked_at, a.push_error = version, now, None
                s.add(a)
                s.flush()
                record_event(
                    s, now, "keys.bundle_pushed", "ok", party=party, object_id=party, bundle_version=version
                )
            else:
                a.push_error = error[:500]
                s.add(a)
                s.flush()
                if (party, version) not in self._failure_logged:
                    self._failure_logged.add((party, version))
                    record_event(
                        s,
                        now,
                        "keys.bundle_pushed",
                        "failed",
                        party=party,
                        object_id=party,
                        bundle_version=version,
                        error=error[:300],
                    )
        if error is None:
            self._push_failures.pop(party, None)
            log.info("bundle_pushed", party=party, version=version)
            return "ok"
        delay = PUSH_BACKOFF[min(failures, len(PUSH_BACKOFF) - 1)]
        self._push_failures[party] = (failures + 1, time.monotonic() + delay)
        log.warning("bundle_push_failed", party=party, version=version, error=error[:200])
        return error


def _usable_for(trusted: TrustedParty, key_id: str, now: datetime) -> float:
    """Seconds from ``now`` until ``key_id`` stops being valid (expiry, revocation); 0 if not valid now."""
    try:
        trusted.signing_key(key_id, now)
    except TrustError:
        return 0.0
    ends = [v.valid_until for k, v in trusted.bundle.signing_keys if k.key_id == key_id and v.valid_until]
    rev = trusted.revocation_of(key_id)
    if rev is not None:
        ends.append(rev.revoked_at)
    return min((e - now).total_seconds() for e in ends) if ends else float("inf")


_syncs: weakref.WeakKeyDictionary[Node, KeySync] = weakref.WeakKeyDictionary()
_syncs_lock = threading.Lock()


def key_sync(node: Node) -> KeySync:
    """The node's one ``KeySync`` (created on first use)."""
    with _syncs_lock:
        sync = _syncs.get(node)
        if sync is None:
            sync = _syncs[node] = KeySync(node)
        return sync


# =====================================================================================
# keys: operator actions
# =====================================================================================


def keys_view(node: Node) -> dict[str, Any]:
    now = node.clock()
    me = node.identity.trusted_self()
    try:
        encrypted: bool | None = root_key_encrypted(node.settings.data_dir)
    except ServiceError:
        encrypted = None
    view = _bundle_view(me, now)
    in_use = node.identity.node_keys.signing.key_id
    for k in view["signing_keys"]:
        k["in_use"] = k["key_id"] == in_use
    return {
        "party": node.party,
        "fingerprint": node.identity.fingerprint,
        "bundle_version": me.bundle.version,
        "signing_key_in_use": in_use,
        "root_key": "offline" if encrypted is None else ("encrypted" if encrypted else "not encrypted"),
        **{k: v for k, v in view.items() if k != "version"},
    }


def rotate_keys(
    node: Node, overlap: timedelta, passphrase: str | None, actor: str, *, push: bool = True
) -> dict[str, Any]:
    """New node signing and encryption keys; the old ones stay valid for ``overlap``; peers get the bundle.

    ``push=False`` (the CLI, beside a running node) leaves reloading and pushing
    to the running node's key sync, so peers never learn keys it cannot use yet.
    """
    if overlap < timedelta(0):
        raise ServiceError(
            "the overlap must not be negative", code="request.invalid", status=422, field="overlap"
        )
    pp = root_passphrase(node, passphrase, writes_keys=True)
    now = node.clock()
    previous = node.identity.node_keys.signing.key_id
    try:
        bundle = rotate_node_keys(node.settings.data_dir, now, overlap, pp)
    except ProlinkError as exc:
        raise _key_error(exc) from None
    trusted = protocol.verify_bundle(bundle, pinned_root=node.identity.root_public)
    signing = max(trusted.bundle.signing_keys, key=lambda kv: kv[1].valid_from)[0].key_id
    encryption = max(trusted.bundle.encryption_keys, key=lambda kv: kv[1].valid_from)[0].key_id
    with session_scope(node.engine) as s:
        record_event(
            s,
            now,
            "keys.rotated",
            "ok",
            actor=actor,
            party=node.party,
            object_id=signing,
            bundle_version=trusted.bundle.version,
            previous_signing_key=previous,
            encryption_key=encryption,
            overlap_until=(now + overlap).isoformat(),
        )
    result: dict[str, Any] = {
        "bundle_version": trusted.bundle.version,
        "signing_key": signing,
        "encryption_key": encryption,
        "previous_signing_key": previous,
        "overlap_until": (now + overlap).isoformat(),
    }
    if push:
        key_sync(node).check(force_push=True)
        result["pushed"] = push_status(node)
    return result


def push_status(node: Node) -> dict[str, str]:
    """Per active peer: "ok" if it confirmed holding our current bundle, else the last push error."""
    version = node.identity.bundle_version
    with session_scope(node.engine, readonly=True) as s:
        peers = s.execute(select(Peer.party).where(Peer.status == "active")).scalars().all()
        rows = {r.party: r for r in s.execute(select(PeerAdmin)).scalars()}
    out = {}
    for party in sorted(peers):
        row = rows.get(party)
        out[party] = (
            "ok"
            if row is not None and row.acked_version == version
            else (row.push_error if row is not None and row.push_error else "pending")
        )
    return out


def revoke(
    node: Node,
    key_id: str,
    reason: str,
    passphrase: str | None,
    actor: str,
    *,
    revoked_at: datetime | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """Revoke an old node key or a signatory key; the new bundle goes to the peers."""
    if not reason.strip():
        raise ServiceError("a revocation needs a reason", code="request.invalid", status=422, field="reason")
    pp = root_passphrase(node, passphrase)
    now = node.clock()
    is_signatory = any(a.key.key_id == key_id for a in list_signatories(node.settings.data_dir))
    try:
        revoke_key(node.settings.data_dir, key_id, reason, now, pp, revoked_at=revoked_at)
    except ProlinkError as exc:
        raise _key_error(exc) from None
    except ValueError as exc:
        raise ServiceError(str(exc), code="request.invalid", status=422) from None
    version = protocol.verify_bundle(
        _bundle_file(node).read_bytes(), pinned_root=node.identity.root_public
    ).bundle.version
    with session_scope(node.engine) as s:
        record_event(
            s,
            now,
            "signatory.revoked" if is_signatory else "keys.revoked",
            "ok",
            actor=actor,
            party=node.party,
            object_id=key_id,
            reason=reason,
            bundle_version=version,
            revoked_at=(revoked_at or now).isoformat(),
        )
    result: dict[str, Any] = {
        "key_id": key_id,
        "kind": "signatory" if is_signatory else "node",
        "bundle_version": version,
        "revoked_at": (revoked_at or now).isoformat(),
    }
    if push:
        key_sync(node).check(force_push=True)
        result["pushed"] = push_status(node)
    return result


def signatories_view(node: Node) -> list[dict[str, Any]]:
    me = node.identity.trusted_self()
    today = node.clock().date()
    with session_scope(node.engine, readonly=True) as s:
        users = {
            u.signatory_key_id: u
            for u in s.execute(select(User).where(User.signatory_key_id.is_not(None))).scalars()  # type: ignore[union-attr]
        }
    out = []
    for a in list_signatories(node.settings.data_dir):
        rev = me.revocation_of(a.key.key_id)
        user = users.get(a.key.key_id)
        out.append(
            {
                "key_id": a.key.key_id,
                "person": a.person,
                "position": a.position,
                "valid_from": a.valid_from.isoformat(),
                "valid_until": a.valid_until.isoformat(),
                "issued_at": _iso(a.issued_at),
                "revoked_at": _iso(rev.revoked_at) if rev else None,
                "valid_today": a.covers(today) and rev is None,
                "user_id": user.id if user else None,
            }
        )
    return out


def authorise_signatory(
    node: Node,
    person: str,
    position: str,
    valid_from: date,
    valid_until: date,
    passphrase: str | None,
    actor: str,
    user_id: int | None = None,
) -> dict[str, Any]:
    """Art. 4: a signing key and a root-signed authorisation for a person; optionally given to a user."""
    if valid_until < valid_from:
        raise ServiceError(
            "an authorisation cannot end before it starts",
            code="request.invalid",
            status=422,
            field="valid_until",
        )
    pp = root_passphrase(node, passphrase, writes_keys=True)
    now = node.clock()
    if user_id is not None:
        with session_scope(node.engine, readonly=True) as s:
            if s.get(User, user_id) is None:
                raise _not_found(f"user {user_id}", "user.not_found")
    try:
        sig = add_signatory(node.settings.data_dir, person, position, valid_from, valid_until, now, pp)
    except ProlinkError as exc:
        raise _key_error(exc) from None
    with session_scope(node.engine) as s:
        if user_id is not None:
            user = s.get(User, user_id, with_for_update=True)
            assert user is not None
            user.signatory_key_id = sig.key_id
            s.add(user)
            s.flush()
        record_event(
            s,
            now,
            "signatory.authorised",
            "ok",
            actor=actor,
            party=node.party,
            object_id=sig.key_id,
            valid_from=valid_from.isoformat(),
            valid_until=valid_until.isoformat(),
            user_id=user_id,
        )
    return next(v for v in signatories_view(node) if v["key_id"] == sig.key_id)


# =====================================================================================
# users
# =====================================================================================


def user_view(u: User) -> dict[str, Any]:
    """Never the token or its hash."""
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "clearance": u.clearance,
        "disabled": u.disabled,
        "signatory_key_id": u.signatory_key_id,
        "created_at": _iso(u.created_at),
    }


def list_users(node: Node, role: str | None = None, disabled: bool | None = None) -> list[dict[str, Any]]:
    query = select(User).order_by(User.id)  # type: ignore[arg-type]
    if role is not None:
        query = query.where(User.role == role)
    if disabled is not None:
        query = query.where(User.disabled == disabled)
    with session_scope(node.engine, readonly=True) as s:
        return [user_view(u) for u in s.execute(query).scalars()]


def check_new_user(name: str, role: str, clearance: str) -> None:
    """What ``add_user`` refuses before it writes anything (the CLI checks it before it makes a signing
    key)."""
    if not name.strip():
        raise ServiceError("a user needs a name", code="request.invalid", status=422, field="name")
    _check_role(role)
    _check_clearance(clearance)


def _check_role(role: str) -> None:
    if role not in USER_ROLES:
        raise ServiceError(
            f"unknown role {role!r}; one of {', '.join(USER_ROLES)}",
            code="user.bad_role",
            status=422,
            field="role",
        )


def _check_clearance(clearance: str) -> None:
    if clearance not in CONFIDENTIALITY_LEVELS:
        raise ServiceError(
            f"unknown clearance {clearance!r}; one of {', '.join(CONFIDENTIALITY_LEVELS)}",
            code="user.bad_clearance",
            status=422,
            field="clearance",
        )


def _check_signing_key(node: Node, key_id: str | None) -> None:
    if key_id is None:
        raise ServiceError(
            "a signatory needs a signing authorisation (signatory_key_id)",
            code="user.no_signing_key",
            status=422,
            field="signatory_key_id",
        )
    known = {v["key_id"]: v for v in signatories_view(node)}
    if key_id not in known or known[key_id]["revoked_at"] is not None:
        raise ServiceError(
            f"no valid signing authorisation {key_id} on this node",
            code="user.no_signing_key",
            status=422,
            field="signatory_key_id",
        )


def _user_row(s: Session, user_id: int) -> User:
    user = s.get(User, user_id, with_for_update=True)
    if user is None:
        raise _not_found(f"user {user_id}", "user.not_found")
    return user


def _keep_an_operator(s: Session, user: User) -> None:
    """Refuse to leave the node without an enabled operator (nobody could undo it through the API)."""
    others = s.execute(
        select(func.count())
        .select_from(User)
        .where(User.role == "operator", User.disabled == False, User.id != user.id)  # noqa: E712
    ).scalar_one()
    if user.role == "operator" and not user.disabled and others == 0:
        raise ServiceError("this is the last enabled operator", code="user.last_operator", status=409)


def add_user(
    node: Node, name: str, role: str, clearance: str, actor: str, signatory_key_id: str | None = None
) -> tuple[dict[str, Any], str]:
    """Create a user; returns its view and its token (shown once; only the hash is stored)."""
    check_new_user(name, role, clearance)
    if role == "signatory":
        _check_signing_key(node, signatory_key_id)
    now = node.clock()
    token = new_token()
    with session_scope(node.engine) as s:
        user = User(
            name=name,
            role=role,
            clearance=clearance,
            token_hash=hash_token(token),
            disabled=False,
            created_at=now,
            signatory_key_id=signatory_key_id,
        )
        s.add(user)
        s.flush()
        record_event(
            s,
            now,
            "user.added",
            "ok",
            actor=actor,
            object_id=f"user:{user.id}",
            role=role,
            clearance=clearance,
            signatory_key_id=signatory_key_id,
        )
    return user_view(user), token


def set_user_disabled(node: Node, user_id: int, disabled: bool, actor: str) -> dict[str, Any]:
    now = node.clock()
    with session_scope(node.engine) as s:
        user = _user_row(s, user_id)
        if user.disabled == disabled:
            raise ServiceError(
                f"user {user_id} is already {'disabled' if disabled else 'enabled'}",
                code="user.already_disabled" if disabled else "user.not_disabled",
                status=409,
            )
        if disabled:
            _keep_an_operator(s, user)
        user.disabled = disabled
        s.add(user)
        s.flush()
        record_event(
            s,
            now,
            "user.disabled" if disabled else "user.enabled",
            "ok",
            actor=actor,
            object_id=f"user:{user_id}",
        )
        return user_view(user)


def update_user(
    node: Node,
    user_id: int,
    actor: str,
    *,
    role: str | None = None,
    clearance: str | None = None,
    signatory_key_id: str | None = None,
) -> dict[str, Any]:
    """Change a user's role and/or clearance (and, for a signatory, the authorisation they sign with)."""
    if role is None and clearance is None and signatory_key_id is None:
        raise ServiceError("nothing to change", code="request.invalid", status=422)
    if role is not None:
        _check_role(role)
    if clearance is not None:
        _check_clearance(clearance)
    now = node.clock()
    with session_scope(node.engine) as s:
        user = _user_row(s, user_id)
        before = {"role": user.role, "clearance": user.clearance, "signatory_key_id": user.signatory_key_id}
        if role is not None and role != user.role:
            _keep_an_operator(s, user)
        new_role = role or user.role
        new_key = signatory_key_id if signatory_key_id is not None else user.signatory_key_id
        if new_role == "signatory":
            _check_signing_key(node, new_key)
        user.role, user.clearance = new_role, clearance or user.clearance
        user.signatory_key_id = new_key
        s.add(user)
        s.flush()
        after = {"role": user.role, "clearance": user.clearance, "signatory_key_id": user.signatory_key_id}
        record_event(
            s,
            now,
            "user.changed",
            "ok",
            actor=actor,
            object_id=f"user:{user_id}",
            before={k: v for k, v in before.items() if after[k] != v},
            after={k: v for k, v in after.items() if before[k] != v},
        )
        return user_view(user)


def rotate_user_token(node: Node, user_id: int, actor: str) -> tuple[dict[str, Any], str]:
    """A new token for the user; the old one stops working at once."""
    now = node.clock()
    token = new_token()
    with session_scope(node.engine) as s:
        user = _user_row(s, user_id)
        user.token_hash = hash_token(token)
        s.add(user)
        s.flush()
        record_event(s, now, "user.token_rotated", "ok", actor=actor, object_id=f"user:{user_id}")
        return user_view(user), token


# =====================================================================================
# outbox
# =====================================================================================


def outbox_view(row: Outbox, msg: Message | None, held: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "message_id": row.message_id,
        "peer": row.peer,
        "state": row.state,
        "held": held,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_attempt_at": _iso(row.next_attempt_at),
        "created_at": _iso(row.created_at),
        "requeued_at": _iso(row.requeued_at),
        "delivered_at": _iso(row.delivered_at),
        "claimed_by": row.claimed_by,
        "claim_expires_at": _iso(row.claim_expires_at),
        "kind": msg.kind if msg else None,
        "thread_id": msg.thread_id if msg else None,
        "envelope_size": msg.envelope_size if msg else None,
        "receipt_status": msg.receipt_status if msg else None,
    }


def list_outbox(
    node: Node, state: str | None = None, peer: str | None = None, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    if state is not None and state not in OUTBOX_STATES:
        raise ServiceError(
            f"unknown state {state!r}; one of {', '.join(OUTBOX_STATES)}",
            code="request.invalid",
            status=422,
            field="state",
        )
    query = (
        select(Outbox, Message)
        .join(Message, (col(Message.id) == col(Outbox.message_id)) & (col(Message.direction) == "out"))
        .order_by(col(Outbox.created_at).desc(), col(Outbox.id).desc())
    )
    counts_q = select(Outbox.state, func.count()).group_by(Outbox.state)
    if state is not None:
        query = query.where(Outbox.state == state)
    if peer is not None:
        query = query.where(Outbox.peer == peer)
        counts_q = counts_q.where(Outbox.peer == peer)
    with session_scope(node.engine, readonly=True) as s:
        rows = s.execute(query.limit(limit).offset(offset)).all()
        counts = dict(s.execute(counts_q).all())
        suspended = set(s.execute(select(Peer.party).where(Peer.status != "active")).scalars())
    return {
        "counts": {st: counts.get(st, 0) for st in OUTBOX_STATES},
        "items": [
            outbox_view(o, m, o.peer in suspended and o.state in ("queued", "in_flight")) for o, m in rows
        ],
    }


def outbox_item(node: Node, message_id: str) -> dict[str, Any]:
    with session_scope(node.engine, readonly=True) as s:
        row = s.execute(select(Outbox).where(Outbox.message_id == message_id)).scalar_one_or_none()
        if row is None:
            raise _not_found(f"outgoing message {message_id} in the outbox", "outbox.not_found")
        msg = s.get(Message, (message_id, "out"))
        peer = s.get(Peer, row.peer)
    return outbox_view(
        row, msg, peer is not None and peer.status != "active" and row.state in ("queued", "in_flight")
    )


def _outbox_row(s: Session, message_id: str) -> Outbox:
    row = s.execute(
        select(Outbox).where(Outbox.message_id == message_id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise _not_found(f"outgoing message {message_id} in the outbox", "outbox.not_found")
    return row


def _refuse_state(row: Outbox, allowed: tuple[str, ...], action: str) -> None:
    if row.state in allowed:
        return
    code, hint = {
        "delivered": ("outbox.already_delivered", "it was delivered; a receipt is on record"),
        "in_flight": ("outbox.in_flight", "a worker is delivering it now"),
        "parked": ("outbox.parked", "it is parked; requeue it"),
        "queued": ("outbox.not_parked", "it is queued, not parked"),
    }[row.state]
    if action == "park" and row.state == "parked":
        code, hint = "outbox.already_parked", "it is already parked"
    raise ServiceError(f"cannot {action} message {row.message_id}: {hint}", code=code, status=409)


def retry_now(node: Node, message_id: str, actor: str) -> dict[str, Any]:
    """Make a waiting (queued) message due now; its attempt count and age window are kept."""
    now = node.clock()
    with session_scope(node.engine) as s:
        row = _outbox_row(s, message_id)
        _refuse_state(row, ("queued",), "retry")
        peer = s.get(Peer, row.peer)
        if peer is not None and peer.status != "active":
            raise ServiceError(f"{row.peer} is suspended; resume it first", code="peer.suspended", status=409)
        s.execute(
            update(Outbox)
            .where(col(Outbox.id) == row.id, col(Outbox.state) == "queued")
            .values(next_attempt_at=now)
        )
        record_event(s, now, "outbox.retried", "ok", actor=actor, party=row.peer, object_id=message_id)
    return outbox_item(node, message_id)


def park_message(node: Node, message_id: str, reason: str, actor: str) -> dict[str, Any]:
    """Stop delivering a queued or in-flight message until it is requeued (a delivery already under way may
    still complete: the receipt then counts)."""
    now = node.clock()
    with session_scope(node.engine) as s:
        row = _outbox_row(s, message_id)
        _refuse_state(row, ("queued", "in_flight"), "park")
        assert row.id is not None
        outbox.park(s, row.id, f"parked by operator: {reason}", now)
        record_event(
            s, now, "outbox.parked", "ok", actor=actor, party=row.peer, object_id=message_id, reason=reason
        )
    return outbox_item(node, message_id)


def requeue_message(node: Node, message_id: str, actor: str) -> dict[str, Any]:
    """A parked message goes back to the queue, due now, with a fresh age window."""
    now = node.clock()
    with session_scope(node.engine) as s:
        row = _outbox_row(s, message_id)
        _refuse_state(row, ("parked",), "requeue")
        assert row.id is not None
        outbox.requeue(s, row.id, now)
        record_event(s, now, "outbox.requeued", "ok", actor=actor, party=row.peer, object_id=message_id)
    return outbox_item(node, message_id)


def hold_if_suspended(node: Node, claim: outbox.Claim) -> bool:
    """Worker hook: a claim for a peer suspended since it was claimed goes back to the queue untouched
    (``outbox.give_back``: if its worker still holds the row under it).

    The attempt is given back (it never happened), so holding never brings a
    message closer to being parked.
    """
    if peer_is_active(node, claim.peer):
        return False
    with session_scope(node.engine) as s:
        outbox.give_back(s, [claim])
    log.info("delivery_held", message_id=claim.message_id, peer=claim.peer)
    return True


# =====================================================================================
# originals (Art. 4) and the agreement (Art. 12, 14)
# =====================================================================================


def list_originals(node: Node, overdue: bool | None = None, owed_by: str | None = None) -> dict[str, Any]:
    from service.case_api import original_view

    today = node.clock().date()
    with session_scope(node.engine, readonly=True) as s:
        rows = s.execute(select(Original).order_by(Original.due_on)).scalars().all()
    views = []
    for o in rows:
        v = original_view(o, today)
        v["side"] = "we_owe" if o.owed_by == node.party else "owed_to_us"
        v["days_left"] = None if o.received_on is not None else (o.due_on - today).days
        views.append(v)
    if overdue is not None:
        views = [v for v in views if v["overdue"] == overdue]
    if owed_by is not None:
        views = [v for v in views if v["owed_by"] == owed_by]
    summary = {
        "we_owe": sum(1 for v in views if v["side"] == "we_owe" and v["received_on"] is None),
        "owed_to_us": sum(1 for v in views if v["side"] == "owed_to_us" and v["received_on"] is None),
        "overdue": sum(1 for v in views if v["overdue"]),
    }
    return {"summary": summary, "originals": views}


AGREEMENT_PARAMETERS = (
    "parties",
    "directions",
    "forms",
    "confidentiality_levels",
    "language",
    "termination_notice_days",
    "originals_due_days",
    "execution_period_days",
)


def baseline_parameters(node: Node) -> dict[str, Any]:
    """Version 1: the agreement as signed (Art. 2, 3, 7, 8, 14) and this node's configured defaults."""
    with session_scope(node.engine, readonly=True) as s:
        peers = list(s.execute(select(Peer.party).order_by(Peer.party)).scalars())
    return {
        "parties": sorted({node.party, *peers}),
        "directions": list(DIRECTIONS),
        "forms": list(FORMS),
        "confidentiality_levels": list(CONFIDENTIALITY_LEVELS),
        "language": "ru",
        "termination_notice_days": NOTICE_PERIOD_DAYS,
        "originals_due_days": node.settings.originals_due_days,
        "execution_period_days": None,
    }


def _version_view(v: AgreementConfigVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "effective_from": v.effective_from.isoformat(),
        "reference": v.reference,
        "parameters": v.parameters,
        "recorded_by": v.recorded_by,
        "recorded_at": _iso(v.recorded_at),
    }


def _baseline_row(node: Node) -> AgreementConfigVersion:
    return AgreementConfigVersion(
        version=1,
        effective_from=AGREEMENT_SIGNED_ON,
        reference=AGREEMENT_REFERENCE,
        parameters=baseline_parameters(node),
        recorded_by="node",
        recorded_at=node.clock(),
    )


def agreement_view(node: Node) -> dict[str, Any]:
    """Art. 12 and 14: the configuration in force, its history and pending versions, the termination state."""
    today = node.clock().date()
    with session_scope(node.engine, readonly=True) as s:
        versions = list(
            s.execute(select(AgreementConfigVersion).order_by(AgreementConfigVersion.version)).scalars()
        )  # type: ignore[arg-type]
        received = termination_received_on(s)
        ends = agreement_ends_on(s)
        notices = s.execute(select(TerminationNotice).order_by(TerminationNotice.received_on)).scalars().all()
    stored = bool(versions)
    if not versions:
        versions = [_baseline_row(node)]
    in_force = [v for v in versions if v.effective_from <= today]
    current = in_force[-1] if in_force else versions[0]
    return {
        "signed_on": AGREEMENT_SIGNED_ON.isoformat(),
        "state": agreement_state_on(today, received),
        "termination": {
            "notice_received_on": _iso(received),
            "ends_on": _iso(ends),
            "notices": [
                {
                    "received_on": n.received_on.isoformat(),
                    "given_by": n.given_by,
                    "source": n.source,
                    "message_id": n.message_id,
                    "recorded_at": _iso(n.recorded_at),
                }
                for n in notices
            ],
        },
        "configuration": {
            "current": _version_view(current),
            "pending": [_version_view(v) for v in versions if v.effective_from > today],
            "history": [_version_view(v) for v in versions],
            "baseline_stored": stored,
        },
    }


def _check_parameters(changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - set(AGREEMENT_PARAMETERS))
    if unknown:
        raise ServiceError(
            f"unknown agreement parameters: {', '.join(unknown)}; known: {', '.join(AGREEMENT_PARAMETERS)}",
            code="agreement.unknown_parameter",
            status=422,
            field=unknown[0],
        )
    for name in ("parties", "directions", "forms", "confidentiality_levels"):
        value = changes.get(name)
        if value is not None and not (
            isinstance(value, list)
            and value
            and all(isinstance(x, str) and x for x in value)
            and len(set(value)) == len(value)
        ):
            raise ServiceError(
                f"{name} must be a non-empty list of distinct strings",
                code="agreement.bad_parameter",
                status=422,
                field=name,
            )
    for name in ("termination_notice_days", "originals_due_days", "execution_period_days"):
        value = changes.get(name)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 3650
        ):
            raise ServiceError(
                f"{name} must be a whole number of days (1-3650)",
                code="agreement.bad_parameter",
                status=422,
                field=name,
            )
    if "language" in changes and not (isinstance(changes["language"], str) and changes["language"]):
        raise ServiceError(
            "language must be a language code", code="agreement.bad_parameter", status=422, field="language"
        )


def add_agreement_version(
    node: Node, effective_from: date, reference: str, changes: dict[str, Any], actor: str
) -> dict[str, Any]:
    """Art. 12: an amendment is a new configuration version with its own start date, never an edit."""
    if not reference.strip():
        raise ServiceError(
            "name the protocol that amends the agreement",
            code="request.invalid",
            status=422,
            field="reference",
        )
    if not changes:
        raise ServiceError(
            "an amendment must change at least one parameter",
            code="agreement.no_change",
            status=422,
            field="changes",
        )
    _check_parameters(changes)
    now = node.clock()
    baseline = _baseline_row(node)
    with session_scope(node.engine) as s:
        latest = (
            s.execute(
                select(AgreementConfigVersion)
                .order_by(AgreementConfigVersion.version.desc())  # type: ignore[attr-defined]
                .limit(1)
                .with_for_update()
            )
            .scalars()
            .first()
        )
        if latest is None:
            s.add(baseline)
            s.flush()
            latest = baseline
        if effective_from < latest.effective_from:
            raise ServiceError(
                f"version {latest.version + 1} cannot start before version {latest.version} "
                f"({latest.effective_from.isoformat()})",
                code="agreement.version_out_of_order",
                status=409,
                field="effective_from",
            )
        parameters = {**latest.parameters, **changes}
        if parameters == latest.parameters:
            raise ServiceError(
                "the amendment changes nothing", code="agreement.no_change", status=422, field="changes"
            )
        row = AgreementConfigVersion(
            version=latest.version + 1,
            effective_from=effective_from,
            reference=reference.strip(),
            parameters=parameters,
            recorded_by=actor,
            recorded_at=now,
        )
        s.add(row)
        s.flush()
        record_event(
            s,
            now,
            "agreement.version_added",
            "ok",
            actor=actor,
            object_id=f"agreement:v{row.version}",
            version=row.version,
            effective_from=effective_from.isoformat(),
            changed=sorted(k for k in changes if latest.parameters.get(k) != changes[k]),
        )
        return _version_view(row)


# =====================================================================================
# overdue requests (for metrics and the admin overview)
# =====================================================================================


def overdue_requests(s: Session, party: str, today: date) -> dict[str, int]:
    rows = s.execute(
        select(Thread.requesting_party, func.count())
        .select_from(Thread)
        .where(
            Thread.kind == "request",
            col(Thread.state).in_(protocol.OPEN_REQUEST_STATES),
            col(Thread.due_on).is_not(None),
            col(Thread.due_on) < today,
        )
        .group_by(Thread.requesting_party)
    ).all()
    out = {"requesting": 0, "requested": 0}
    for requesting, n in rows:
        out["requesting" if requesting == party else "requested"] += n
    return out


def cli_actor() -> str:
    """Who acts from the command line (the audit log's actor)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"

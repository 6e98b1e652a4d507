"""The head publisher: signs a checkpoint of the audit log when it grew, and has every peer cosign it.

Runs in a thread beside the delivery worker (``prolink serve``). Every
``audit_head_interval_seconds`` (at most a minute) it signs a new checkpoint if
there are new entries (``audit.sign_head``), then, for each active peer that
has not cosigned the newest head, pushes it to ``POST /v1/log/heads`` with a
consistency proof from the size that peer last accepted. Where that size is
not known locally it asks (``GET /v1/log/heads/{our party}``); a peer that
answers ``audit.base_mismatch`` says which size it holds, and the push is
retried once from there. A returned cosignature is verified against the
peer's bundle before it is stored.

If the peer holds a larger head than this node's whole log, this node's log
was cut back (restored from an old backup, or tampered with): it logs an error
and still pushes, with no proof, so the peer judges and raises its alert.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select

import protocol
from keys import client_ssl_context
from protocol import LogError, ProlinkError
from service import audit
from service.audit_witness import latest_alert
from service.background import BackgroundLoop
from service.db import session_scope
from service.errors import peer_error_code
from service.models import AuditAlert, AuditCosignature, Peer
from service.node import Node

log = structlog.get_logger("prolink.audit")

HEADS_PATH = "/v1/log/heads"


class HeadPublisher(BackgroundLoop):
    """Signs tree heads and collects peers' cosignatures; one per ``prolink serve`` process."""

    failure_event = "audit_heads_round_failed"

    def __init__(self, node: Node) -> None:
        super().__init__(f"{node.party}-heads-{uuid.uuid4().hex[:8]}")
        self.node = node
        self._clients: dict[tuple[str, int], httpx.Client] = {}

    def interval(self) -> float:
        return self.node.settings.audit_head_interval_seconds

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def round(self) -> bool:
        self.run_once()
        return False  # then wait for the interval (or a peer holding a newer head wakes us)

    def run_once(self) -> dict[str, str]:
        """Sign a head if the log grew, then push the newest head to every active peer; returns outcomes."""
        self.sign()
        outcomes = {}
        for party in self._active_peers():
            if self._stop.is_set():
                break
            outcomes[party] = self.push(party)
        return outcomes

    def sign(self) -> audit.Head | None:
        node = self.node
        with session_scope(node.engine) as s:
            head = audit.sign_head(s, node.identity.node_keys.signing, node.party, node.clock())
        if head is not None:
            log.info("audit_head_signed", size=head.size, root=head.root.hex()[:16])
        return head

    def _active_peers(self) -> list[str]:
        with session_scope(self.node.engine, readonly=True) as s:
            query = select(Peer.party).where(Peer.status == "active").order_by(Peer.party)
            return list(s.execute(query).scalars())

    # --- one peer -----------------------------------------------------------------

    def _client(self, party: str) -> tuple[httpx.Client, str]:
        trusted = self.node.peer(party)
        key = (party, trusted.bundle.version)
        client = self._clients.get(key)
        if client is None:
            ctx = client_ssl_context(
                self.node.identity, trusted.bundle.tls_ca_pem, allow_tls12=self.node.settings.allow_tls12
            )
            client = httpx.Client(verify=ctx, timeout=httpx.Timeout(30.0, connect=5.0))
            self._clients[key] = client
        return client, trusted.bundle.endpoint.rstrip("/")

    def push(self, party: str) -> str:
        """Have ``party`` cosign our newest head: 'cosigned', 'up_to_date', 'refused', 'failed' or 'none'."""
        node = self.node
        with session_scope(node.engine, readonly=True) as s:
            head = audit.latest_head(s)
            if head is None:
                return "none"
            if s.get(AuditCosignature, (head.size, party)) is not None:
                return "up_to_date"
            base = audit.cosigned_sizes(s, party)
        try:
            client, url = self._client(party)
            if base is None:
                base = self._accepted_size(client, url, party)
            for _attempt in range(2):
                response = client.post(url + HEADS_PATH, json=self._request(head, base))
                body: Any = protocol.read_json(response.content)
                if response.status_code == 200:
                    self._store(party, head, str(body["cosignature"]))
                    return "cosigned"
                code = peer_error_code(response)
                accepted = body.get("accepted", {}).get("size") if isinstance(body, dict) else None
                if code in ("audit.base_mismatch", "audit.stale_head") and isinstance(accepted, int):
                    base = accepted
                    if code == "audit.stale_head":
                        self._behind(party, head, accepted)
                        return "refused"
                    continue
                self._refused(party, head, response.status_code, code, body)
                return "refused"
            return "refused"
        except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "audit_head_push_failed",
                peer=party,
                size=head.size,
                error_type=type(exc).__name__,
                error=str(exc)[:200],
            )
            return "failed"
        except ProlinkError as exc:
            log.warning(
                "audit_head_push_failed", peer=party, size=head.size, code=exc.code, error=exc.message
            )
            return "failed"

    def _accepted_size(self, client: httpx.Client, url: str, party: str) -> int:
        r = client.get(f"{url}{HEADS_PATH}/{self.node.party}")
        if r.status_code == 404:
            return 0
        r.raise_for_status()
        return int(protocol.read_json(r.content)["size"])

    def _request(self, head: audit.Head, base: int) -> dict[str, Any]:
        with session_scope(self.node.engine, readonly=True) as s:
            conn = s.connection()
            have = audit.size(conn)
            if base in (0, head.size):
                proof: list[bytes] = []
            elif base < head.size:
                proof = audit.consistency(conn, base, head.size)
            elif base <= have:
                proof = audit.consistency(conn, head.size, base)
            else:
                log.error(
                    "audit_log_behind_peer",
                    size=have,
                    peer_size=base,
                    message="a peer cosigned a larger tree than this node's whole audit log: the log "
                    "was rolled back",
                )
                proof = []
        return {
            "party": self.node.party,
            "checkpoint": head.note.decode("utf-8"),
            "old_size": base,
            "proof": [base64.b64encode(h).decode("ascii") for h in proof],
        }

    def _store(self, party: str, head: audit.Head, line: str) -> None:
        node = self.node
        trusted = node.peer(party)
        sig = protocol.parse_signature_line(line)
        text = protocol.parse_note(head.note).text
        key, ts = protocol.verify_cosignature(
            text, sig, protocol.witness_name(party), [k for k, _ in trusted.bundle.signing_keys]
        )
        when = datetime.fromtimestamp(ts, UTC)
        now = node.clock()
        if abs(when - now) > timedelta(seconds=node.settings.clock_skew_seconds):
            raise LogError(
                f"{party}'s cosignature is dated {when.isoformat()}, far from now", code="audit.bad_time"
            )
        trusted.signing_key(key.key_id, when)
        with session_scope(node.engine) as s:
            if s.get(AuditCosignature, (head.size, party)) is None:
                s.add(
                    AuditCosignature(
                        head_size=head.size, party=party, timestamp=ts, line=sig.line(), received_at=now
                    )
                )
        log.info("audit_head_cosigned_by_peer", peer=party, size=head.size)

    def _behind(self, party: str, head: audit.Head, accepted: int) -> None:
        """The peer holds a larger head than our newest: sign a newer one, unless our log is smaller."""
        with session_scope(self.node.engine, readonly=True) as s:
            have = audit.size(s.connection())
        if have < accepted:
            self._refused(
                party,
                head,
                409,
                "audit.log_behind_peer",
                {"message": f"{party} cosigned our log at size {accepted} but it has {have} entries"},
            )
        else:
            self.wake()

    def _refused(self, party: str, head: audit.Head, status: int, code: str, body: Any) -> None:
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
        log.error(
            "audit_head_refused_by_peer",
            peer=party,
            size=head.size,
            status=status,
            code=code,
            message=str(message)[:500],
        )
        node = self.node
        with session_scope(node.engine) as s:
            last = latest_alert(s, party, code)
            peer_holds = body.get("accepted", {}).get("size") if isinstance(body, dict) else None
            same_base = (
                peer_holds is not None and last is not None and last.evidence.get("peer_holds") == peer_holds
            )
            if last is not None and (last.evidence.get("size") == head.size or same_base):
                return  # the same incident: one alert
            s.add(
                AuditAlert(
                    at=node.clock(),
                    party=party,
                    code=code or f"http.{status}",
                    message=f"{party} refused our head of size {head.size}: {message}"[:2000],
                    evidence={
                        "size": head.size,
                        "status": status,
                        "peer_holds": peer_holds,
                        "answer": body if isinstance(body, dict) else None,
                    },
                )
            )

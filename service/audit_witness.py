"""Witnessing a peer's audit log: check each tree head it sends against the last one we accepted, cosign it.

A peer pushes its newest checkpoint with a consistency proof from the size we
last accepted (``old_size``). We verify the checkpoint's signature with the
peer's bundle (the key must be valid and unrevoked when it signed), then, with
the peer's row locked so that two pushes are judged one after the other:

* nothing accepted yet: accept (the bundle, pinned by fingerprint, is the anchor);
* a larger tree: the proof must show our accepted tree is a prefix of it;
* the same size: the root must be the same (else two histories: a fork);
* a smaller tree: the proof must show it is a prefix of ours (a late, stale
  push: refused without alarm); if it cannot, the log was cut back.

``old_size`` other than our accepted size is answered with ``audit.base_mismatch``
and our accepted head, so the sender can retry with the right proof. A head
that fails the proof is refused with ``audit.inconsistent_head`` (409) and
raises an alert: a logged error, an ``audit_alert`` row with the evidence (both
signed checkpoints and the proof) and an ``audit.alert`` entry in our own log.
Accepted heads are kept with the cosignature we returned.

Routine head traffic is not itself audited: each entry would make a new head
to cosign, and the two logs would feed each other forever.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

import protocol
from protocol import LogError, ProlinkError
from service.db import session_scope
from service.errors import ServiceError, error_body
from service.models import AuditAlert, AuditPeerHead, Peer
from service.node import Node, record_event

log = structlog.get_logger("prolink.audit")

MAX_PROOF = 64
MAX_NOTE = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _error(status: int, code: str, message: str, **extra: Any) -> Answer:
    return Answer(status, error_body(ProlinkError(message, code=code), **extra))


def accepted_view(row: AuditPeerHead) -> dict[str, Any]:
    return {
        "party": row.party,
        "size": row.size,
        "root": base64.b64encode(bytes(row.root)).decode("ascii"),
        "checkpoint": row.note,
        "cosignature": row.cosignature,
        "accepted_at": row.accepted_at.isoformat(),
    }


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise LogError("proof hashes are base64 strings", code="audit.bad_request")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise LogError("proof hashes are base64 strings", code="audit.bad_request") from None


def latest_accepted(session: Session, party: str) -> AuditPeerHead | None:
    return (
        session.execute(
            select(AuditPeerHead)
            .where(AuditPeerHead.party == party)
            .order_by(AuditPeerHead.size.desc())
            .limit(1)
        )
        .scalars()
        .first()
    )  # type: ignore[attr-defined]


def _parse_request(body: Any) -> tuple[bytes, int | None, list[bytes]]:
    if not isinstance(body, dict) or not isinstance(body.get("checkpoint"), str):
        raise LogError("the body must be a JSON object with a 'checkpoint' note", code="audit.bad_request")
    note = body["checkpoint"].encode("utf-8")
    if len(note) > MAX_NOTE:
        raise LogError("checkpoint note too large", code="audit.bad_request")
    old = body.get("old_size")
    if old is not None and (not isinstance(old, int) or isinstance(old, bool) or old < 0):
        raise LogError("old_size must be a non-negative integer", code="audit.bad_request")
    raw = body.get("proof", [])
    if not isinstance(raw, list) or len(raw) > MAX_PROOF:
        raise LogError(f"proof must be a list of at most {MAX_PROOF} hashes", code="audit.bad_request")
    proof = [_unb64(h) for h in raw]
    if any(len(h) != 32 for h in proof):
        raise LogError("proof hashes are 32 bytes", code="audit.bad_request")
    return note, old, proof


def accept_head(node: Node, party: str, body: Any) -> Answer:
    """Judge one pushed checkpoint of ``party``'s log (``party`` authenticated by its TLS certificate)."""
    now = node.clock()
    try:
        note, old_size, proof = _parse_request(body)
        trusted = node.peer(party)
        opened = protocol.open_checkpoint(
            note, protocol.log_origin(party), [k for k, _ in trusted.bundle.signing_keys]
        )
        cp = opened.checkpoint
        signed_at = datetime.fromtimestamp(cp.time, UTC) if cp.time is not None else now
        skew = timedelta(seconds=node.settings.clock_skew_seconds)
        if signed_at > now + skew:
            raise LogError(
                f"the checkpoint is dated {signed_at.isoformat()}, in the future", code="audit.future_head"
            )
        trusted.signing_key(opened.key.key_id, signed_at)
    except ServiceError as exc:
        return _error(exc.status, exc.code, exc.message)
    except ProlinkError as exc:
        status = (
            401
            if exc.code in ("audit.bad_signature", "audit.unknown_key")
            else 403
            if exc.code.startswith("trust.")
            else 400
        )
        log.warning("audit_head_refused", party=party, code=exc.code)
        return _error(status, exc.code, exc.message)

    with session_scope(node.engine) as s:
        _lock_peer(s, party)
        last = latest_accepted(s, party)
        if last is None:
            return _accept(s, node, party, opened, now)
        accepted = {"accepted": accepted_view(last)}
        if cp.size == last.size:
            if cp.root == bytes(last.root):
                return Answer(200, {"cosignature": last.cosignature, "size": last.size, "repeated": True})
            return _alert(
                s,
                node,
                party,
                now,
                opened,
                last,
                proof,
                old_size,
                f"{party} signed two different roots for the same size {cp.size}: its log forked",
            )
        if old_size != last.size:
            return _error(
                409,
                "audit.base_mismatch",
                f"this node last accepted {party}'s head of size {last.size}; prove from there",
                **accepted,
            )
        try:
            if cp.size > last.size:
                protocol.verify_consistency(last.size, cp.size, bytes(last.root), cp.root, proof)
            else:
                protocol.verify_consistency(cp.size, last.size, cp.root, bytes(last.root), proof)
        except LogError as exc:
            what = "is not an extension of" if cp.size > last.size else "is smaller than and not a prefix of"
            return _alert(
                s,
                node,
                party,
                now,
                opened,
                last,
                proof,
                old_size,
                f"{party}'s head of size {cp.size} (root {cp.root.hex()[:16]}…) {what} the head of "
                f"size {last.size} (root {bytes(last.root).hex()[:16]}…) this node cosigned at "
                f"{last.accepted_at.isoformat()}: {party}'s audit log was rolled back or rewritten "
                f"({exc.message})",
            )
        if cp.size < last.size:
            return _error(
                409,
                "audit.stale_head",
                f"this node already cosigned {party}'s head of size {last.size}; send a newer one",
                **accepted,
            )
        return _accept(s, node, party, opened, now)


def _lock_peer(s: Session, party: str) -> None:
    """Serialise the judging of one peer's heads (PostgreSQL: row lock that does not block FK checks)."""
    s.execute(select(Peer.party).where(Peer.party == party).with_for_update(key_share=True))


def _accept(s: Session, node: Node, party: str, opened: protocol.OpenedCheckpoint, now: datetime) -> Answer:
    cp = opened.checkpoint
    line = protocol.cosign(
        opened.note.text,
        protocol.witness_name(node.party),
        node.identity.node_keys.signing,
        int(now.timestamp()),
    ).line()
    s.add(
        AuditPeerHead(
            party=party,
            size=cp.size,
            root=cp.root,
            note=opened.note.to_bytes().decode("utf-8"),
            cosignature=line,
            accepted_at=now,
        )
    )
    log.info("audit_head_cosigned", party=party, size=cp.size)
    return Answer(200, {"cosignature": line, "size": cp.size})


def latest_alert(s: Session, party: str, code: str) -> AuditAlert | None:
    """The newest alert about ``party`` with ``code``: whether a new one is the same incident (one alert
    per incident, here and in ``audit_heads``)."""
    return (
        s.execute(
            select(AuditAlert)
            .where(AuditAlert.party == party, AuditAlert.code == code)
            .order_by(AuditAlert.id.desc())  # type: ignore[union-attr]
            .limit(1)
        )
        .scalars()
        .first()
    )


def _alert(
    s: Session,
    node: Node,
    party: str,
    now: datetime,
    opened: protocol.OpenedCheckpoint,
    last: AuditPeerHead,
    proof: list[bytes],
    old_size: int | None,
    message: str,
) -> Answer:
    cp = opened.checkpoint
    code = "audit.inconsistent_head"
    evidence = {
        "offered_size": cp.size,
        "offered_root": cp.root.hex(),
        "offered_checkpoint": opened.note.to_bytes().decode("utf-8"),
        "accepted_size": last.size,
        "accepted_root": bytes(last.root).hex(),
        "accepted_checkpoint": last.note,
        "accepted_cosignature": last.cosignature,
        "old_size": old_size,
        "proof": [h.hex() for h in proof],
    }
    previous = latest_alert(s, party, code)
    # One alert per incident: while it lasts, our accepted head stays the same, whatever the peer sends.
    repeat = (
        previous is not None
        and previous.evidence.get("accepted_root") == evidence["accepted_root"]
        and previous.evidence.get("accepted_size") == last.size
    )
    log.error(
        "audit_alert",
        party=party,
        code=code,
        offered_size=cp.size,
        accepted_size=last.size,
        repeated=repeat,
        message=message,
    )
    if not repeat:
        s.add(AuditAlert(at=now, party=party, code=code, message=message[:2000], evidence=evidence))
        record_event(
            s,
            now,
            "audit.alert",
            code,
            party=party,
            object_id=f"{protocol.log_origin(party)}@{cp.size}",
            offered_size=cp.size,
            offered_root=cp.root.hex(),
            accepted_size=last.size,
            accepted_root=bytes(last.root).hex(),
        )
    return _error(409, code, message, accepted=accepted_view(last))

"""Signed receipts: the receiver's proof that it got (or refused) one exact envelope.

A receipt is a DSSE statement signed by the receiving node's key. It names the
message id and the SHA-256 of the envelope bytes exactly as received, so the
sender can prove delivery of those bytes and nothing else.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._encoding import Signed, parse_json
from ._envelope import NodeKeys, read_framing
from ._errors import EncodingError, ProlinkError, ReceiptError
from ._primitives import sha256
from ._trust import TrustedParty, format_time, parse_time, sign_statement, verify_statement

RECEIPT_TYPE = "application/vnd.prolink.receipt+json"
ACCEPTED = "accepted"
REJECTED = "rejected"
_KEYS = {"message_id", "envelope_sha256", "sender", "receiver", "status", "reason_code", "issued_at"}


@dataclass(frozen=True)
class Receipt:
    message_id: str
    envelope_sha256: str
    sender: str
    receiver: str
    status: str
    reason_code: str | None
    issued_at: datetime
    key_id: str

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


def make_receipt(
    envelope_sha256: bytes,
    message_id: str,
    sender: str,
    status: str,
    reason_code: str | None,
    receiver: NodeKeys,
    now: datetime,
) -> bytes:
    if status not in (ACCEPTED, REJECTED) or (status == REJECTED) != (reason_code is not None):
        raise ReceiptError("a rejection needs a reason code, an acceptance none", code="receipt.bad_status")
    payload: dict[str, Any] = {
        "message_id": message_id,
        "envelope_sha256": envelope_sha256.hex(),
        "sender": sender,
        "receiver": receiver.party,
        "status": status,
        "reason_code": reason_code,
        "issued_at": format_time(now),
    }
    return sign_statement(RECEIPT_TYPE, payload, receiver.signing).to_bytes()


def receipt(
    envelope: bytes, status: str, reason_code: str | None, receiver: NodeKeys, now: datetime
) -> bytes:
    """Receipt for ``envelope`` as received (message id and sender read from its clear header if
    parseable)."""
    try:
        header = read_framing(envelope).header
        message_id, sender = header.message_id, header.sender
    except ProlinkError:
        message_id, sender = "", ""
    return make_receipt(sha256(envelope), message_id, sender, status, reason_code, receiver, now)


def verify_receipt(
    data: bytes, receiver: TrustedParty, *, envelope_sha256: bytes, message_id: str, sender: str
) -> Receipt:
    """Verify a receipt against the receiving Party's bundle and the envelope it must answer."""
    try:
        signed = Signed.from_bytes(data, what="receipt")
        key = receiver.signing_key(signed.key_id, _issued_at(signed))
        obj = verify_statement(signed, RECEIPT_TYPE, key, what="receipt", code="receipt.bad_signature")
        if set(obj) != _KEYS:
            raise ReceiptError("receipt has missing or unknown fields", code="receipt.malformed")
        rec = Receipt(
            obj["message_id"],
            obj["envelope_sha256"],
            obj["sender"],
            obj["receiver"],
            obj["status"],
            obj["reason_code"],
            parse_time(obj["issued_at"], what="issued_at"),
            signed.key_id,
        )
    except EncodingError as exc:
        raise ReceiptError(f"receipt is malformed: {exc.message}", code="receipt.malformed") from None
    except ProlinkError as exc:
        if isinstance(exc, ReceiptError):
            raise
        raise ReceiptError(f"receipt does not verify: {exc.message}", code="receipt.bad_signature") from None
    if rec.status not in (ACCEPTED, REJECTED):
        raise ReceiptError("receipt status is unknown", code="receipt.malformed")
    if rec.envelope_sha256 != envelope_sha256.hex() or rec.message_id != message_id:
        raise ReceiptError("receipt is for another envelope", code="receipt.mismatch")
    if rec.receiver != receiver.party or rec.sender != sender:
        raise ReceiptError("receipt names other parties", code="receipt.mismatch")
    return rec


def _issued_at(signed: Signed) -> datetime:
    """The receipt's own time, read before verification only to pick the key valid then."""
    obj = parse_json(signed.payload, what="receipt")
    if not isinstance(obj, dict):
        raise EncodingError("receipt payload is not an object")
    return parse_time(obj.get("issued_at"), what="issued_at")

"""Receipts: the receiver's signed proof that it got (or refused) one exact envelope."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import timedelta

import pytest

from protocol import (
    ACCEPTED,
    REJECTED,
    NodeKeys,
    ProlinkError,
    ReceiptError,
    Revocation,
    Signed,
    SigningKey,
    canonical_json,
    make_receipt,
    receipt,
    verify_receipt,
)
from protocol._trust import sign_statement
from tests.protocol.conftest import NOW, Documents, Party, rebuild, sealed

RECEIPT_TYPE = "application/vnd.prolink.receipt+json"


@pytest.fixture
def envelope(kz: Party, by: Party, docs: Documents) -> bytes:
    return sealed(kz, by, docs.request())


def check(data: bytes, by: Party, envelope: bytes, **overrides: object) -> object:
    from protocol import read_framing

    header = read_framing(envelope).header
    args: dict[str, object] = {
        "envelope_sha256": hashlib.sha256(envelope).digest(),
        "message_id": header.message_id,
        "sender": header.sender,
    }
    args.update(overrides)
    return verify_receipt(data, by.trusted, **args)  # type: ignore[arg-type]


def test_accepted_receipt_round_trip(by: Party, envelope: bytes) -> None:
    rec = check(receipt(envelope, ACCEPTED, None, by.keys, NOW), by, envelope)
    assert rec.accepted  # type: ignore[attr-defined]
    assert rec.status == ACCEPTED and rec.reason_code is None  # type: ignore[attr-defined]
    assert rec.envelope_sha256 == hashlib.sha256(envelope).hexdigest()  # type: ignore[attr-defined]
    assert (rec.sender, rec.receiver) == ("KZ", "BY")  # type: ignore[attr-defined]
    assert rec.issued_at == NOW  # type: ignore[attr-defined]
    assert rec.key_id == by.node.key_id  # type: ignore[attr-defined]


def test_rejected_receipt_carries_the_reason_code(by: Party, envelope: bytes) -> None:
    rec = check(receipt(envelope, REJECTED, "envelope.replayed", by.keys, NOW), by, envelope)
    assert not rec.accepted  # type: ignore[attr-defined]
    assert rec.reason_code == "envelope.replayed"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "reason"), [(REJECTED, None), (ACCEPTED, "envelope.replayed"), ("maybe", None)]
)
def test_receipt_status_and_reason_go_together(
    by: Party, envelope: bytes, status: str, reason: str | None
) -> None:
    with pytest.raises(ReceiptError) as exc:
        receipt(envelope, status, reason, by.keys, NOW)
    assert exc.value.code == "receipt.bad_status"


def test_receipt_is_deterministic_and_byte_exact(by: Party, envelope: bytes) -> None:
    a = receipt(envelope, ACCEPTED, None, by.keys, NOW)
    assert a == receipt(envelope, ACCEPTED, None, by.keys, NOW)
    payload = json.loads(Signed.from_bytes(a, what="t").payload)
    assert payload == {
        "message_id": payload["message_id"],
        "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
        "sender": "KZ",
        "receiver": "BY",
        "status": "accepted",
        "reason_code": None,
        "issued_at": "2026-11-25T12:00:00.000000Z",
    }


def test_receipt_binds_the_exact_envelope_bytes(
    kz: Party, by: Party, docs: Documents, envelope: bytes
) -> None:
    data = receipt(envelope, ACCEPTED, None, by.keys, NOW)
    other = sealed(kz, by, docs.request())
    with pytest.raises(ReceiptError) as exc:
        check(data, by, envelope, envelope_sha256=hashlib.sha256(other).digest())
    assert exc.value.code == "receipt.mismatch"


def test_receipt_binds_the_message_id(by: Party, envelope: bytes) -> None:
    data = receipt(envelope, ACCEPTED, None, by.keys, NOW)
    with pytest.raises(ReceiptError) as exc:
        check(data, by, envelope, message_id="00000000-0000-4000-8000-000000000000")
    assert exc.value.code == "receipt.mismatch"


def test_receipt_binds_the_sender(by: Party, envelope: bytes) -> None:
    data = receipt(envelope, ACCEPTED, None, by.keys, NOW)
    with pytest.raises(ReceiptError) as exc:
        check(data, by, envelope, sender="UZ")
    assert exc.value.code == "receipt.mismatch"


def test_receipt_from_another_party_does_not_verify(kz: Party, by: Party, envelope: bytes) -> None:
    data = receipt(envelope, ACCEPTED, None, kz.keys, NOW)
    with pytest.raises(ReceiptError) as exc:
        check(data, by, envelope)
    assert exc.value.code == "receipt.bad_signature"


def test_receipt_signed_by_an_unknown_key_does_not_verify(by: Party, envelope: bytes) -> None:
    stranger = NodeKeys("BY", SigningKey.generate(), by.keys.decryption)
    with pytest.raises(ReceiptError) as exc:
        check(receipt(envelope, ACCEPTED, None, stranger, NOW), by, envelope)
    assert exc.value.code == "receipt.bad_signature"


def test_receipt_naming_another_receiver_is_refused(kz: Party, by: Party, envelope: bytes) -> None:
    liar = NodeKeys("UZ", by.node, by.keys.decryption)
    with pytest.raises(ReceiptError) as exc:
        check(receipt(envelope, ACCEPTED, None, liar, NOW), by, envelope)
    assert exc.value.code == "receipt.mismatch"


def test_tampered_receipt_does_not_verify(by: Party, envelope: bytes) -> None:
    signed = Signed.from_bytes(receipt(envelope, REJECTED, "envelope.replayed", by.keys, NOW), what="t")
    obj = json.loads(signed.payload)
    obj["status"], obj["reason_code"] = "accepted", None
    with pytest.raises(ReceiptError) as exc:
        check(replace(signed, payload=canonical_json(obj)).to_bytes(), by, envelope)
    assert exc.value.code == "receipt.bad_signature"


def test_receipt_from_a_revoked_node_key_does_not_verify(by: Party, envelope: bytes) -> None:
    data = receipt(envelope, ACCEPTED, None, by.keys, NOW)
    revoked = rebuild(by, revocations=[Revocation(by.node.key_id, NOW - timedelta(hours=1), "lost")])
    with pytest.raises(ReceiptError) as exc:
        verify_receipt(
            data,
            revoked.trusted,
            envelope_sha256=hashlib.sha256(envelope).digest(),
            message_id=json.loads(Signed.from_bytes(data, what="t").payload)["message_id"],
            sender="KZ",
        )
    assert exc.value.code == "receipt.bad_signature"


def test_receipt_issued_after_the_key_expired_does_not_verify(by: Party, envelope: bytes) -> None:
    expired = rebuild(by, node_valid_until=NOW - timedelta(days=1))
    data = receipt(envelope, ACCEPTED, None, expired.keys, NOW)
    with pytest.raises(ReceiptError) as exc:
        verify_receipt(
            data,
            expired.trusted,
            envelope_sha256=hashlib.sha256(envelope).digest(),
            message_id=json.loads(Signed.from_bytes(data, what="t").payload)["message_id"],
            sender="KZ",
        )
    assert exc.value.code == "receipt.bad_signature"


def test_a_receipt_answers_even_unparseable_bytes(by: Party) -> None:
    junk = b"not an envelope at all"
    data = receipt(junk, REJECTED, "encoding.malformed", by.keys, NOW)
    rec = verify_receipt(
        data, by.trusted, envelope_sha256=hashlib.sha256(junk).digest(), message_id="", sender=""
    )
    assert rec.reason_code == "encoding.malformed"


def test_make_receipt_matches_receipt(by: Party, envelope: bytes) -> None:
    from protocol import read_framing

    header = read_framing(envelope).header
    assert make_receipt(
        hashlib.sha256(envelope).digest(), header.message_id, header.sender, ACCEPTED, None, by.keys, NOW
    ) == receipt(envelope, ACCEPTED, None, by.keys, NOW)


@pytest.mark.parametrize(
    "payload",
    [
        {
            "message_id": "m",
            "envelope_sha256": "00",
            "sender": "KZ",
            "receiver": "BY",
            "status": "accepted",
            "reason_code": None,
            "issued_at": "2026-11-25T12:00:00.000000Z",
            "extra": 1,
        },
        {
            "message_id": "m",
            "envelope_sha256": "00",
            "sender": "KZ",
            "receiver": "BY",
            "status": "lost",
            "reason_code": None,
            "issued_at": "2026-11-25T12:00:00.000000Z",
        },
        {"message_id": "m", "issued_at": "yesterday"},
        {"message_id": "m"},
    ],
)
def test_well_signed_but_malformed_receipt_is_refused(by: Party, payload: dict[str, object]) -> None:
    data = sign_statement(RECEIPT_TYPE, payload, by.node).to_bytes()
    with pytest.raises(ReceiptError) as exc:
        verify_receipt(data, by.trusted, envelope_sha256=bytes(32), message_id="m", sender="KZ")
    assert exc.value.code == "receipt.malformed"


@pytest.mark.parametrize("garbage", [b"", b"{}", b"[1]", b"\xff\xfe"])
def test_garbage_is_not_a_receipt(by: Party, garbage: bytes) -> None:
    with pytest.raises(ProlinkError) as exc:
        verify_receipt(garbage, by.trusted, envelope_sha256=bytes(32), message_id="m", sender="KZ")
    assert exc.value.code == "receipt.malformed"


def test_an_envelope_statement_type_cannot_pass_as_a_receipt(kz: Party, by: Party, docs: Documents) -> None:
    """A document signed by the node key is not a receipt (DSSE payload types separate them)."""
    data = sign_statement(
        "application/vnd.prolink.document+json",
        {"message_id": "m", "issued_at": "2026-11-25T12:00:00.000000Z"},
        by.node,
    ).to_bytes()
    with pytest.raises(ReceiptError) as exc:
        verify_receipt(data, by.trusted, envelope_sha256=bytes(32), message_id="m", sender="KZ")
    assert exc.value.code == "receipt.bad_signature"

"""Envelope v1: seal, open, and every way a received envelope must be refused.

Read with ``protocol/README.md``: several helpers here rebuild envelopes from
the documented layout alone (``assemble``, ``craft``), so these tests also check
that the README describes the bytes ``seal`` really produces.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from protocol import (
    CHUNK_SIZE,
    CLASSIC,
    MAGIC,
    PQ_HYBRID,
    Authorisation,
    DecryptionKey,
    EncryptionKey,
    NodeKeys,
    ProlinkError,
    Revocation,
    Signed,
    SigningKey,
    b64e,
    canonical_json,
    document_to_json,
    issue_authorisation,
    issue_revocation,
    open,
    pae,
    parse_document,
    read_framing,
    seal,
    seal_stream,
    sign_document,
)
from protocol._envelope import DEFAULT_MAX_AGE, DEFAULT_MAX_SKEW
from protocol._stream import attachment_key, encrypt_stream
from tests.protocol.conftest import (
    AUTH_FROM,
    AUTH_UNTIL,
    KEYS_FROM,
    NOW,
    Documents,
    Party,
    attachment_ref,
    make_authorisation,
    make_party,
    parties,
    rebuild,
    sealed,
    sign,
)

ENVELOPE_SIG_TYPE = "application/vnd.prolink.envelope.v1"
BODY_INFO_TYPE = "application/vnd.prolink.envelope-body.v1"
DOCUMENT_TYPE = "application/vnd.prolink.document+json"
SEALED_CHUNK = CHUNK_SIZE + 16


def code_of(exc_info: pytest.ExceptionInfo[ProlinkError]) -> str:
    return exc_info.value.code


# --- the documented layout, rebuilt independently --------------------------------


class Parts:
    """An envelope cut along the documented layout."""

    def __init__(self, envelope: bytes) -> None:
        assert envelope[:8] == MAGIC
        (hlen,) = struct.unpack(">I", envelope[8:12])
        self.header = envelope[12 : 12 + hlen]
        pos = 12 + hlen
        (blen,) = struct.unpack(">I", envelope[pos : pos + 4])
        self.body = envelope[pos + 4 : pos + 4 + blen]
        pos += 4 + blen
        (count,) = struct.unpack(">I", envelope[pos : pos + 4])
        pos += 4
        self.attachments: list[bytes] = []
        for _ in range(count):
            (alen,) = struct.unpack(">Q", envelope[pos : pos + 8])
            self.attachments.append(envelope[pos + 8 : pos + 8 + alen])
            pos += 8 + alen
        self.signature = envelope[pos:]
        assert len(self.signature) == 64

    def header_json(self) -> dict[str, Any]:
        return json.loads(self.header)

    def chunks(self, index: int) -> list[bytes]:
        stream = self.attachments[index]
        return [stream[i : i + SEALED_CHUNK] for i in range(0, len(stream), SEALED_CHUNK)]


def payload_section(body: bytes, attachments: list[bytes]) -> bytes:
    out = struct.pack(">I", len(body)) + body + struct.pack(">I", len(attachments))
    for stream in attachments:
        out += struct.pack(">Q", len(stream)) + stream
    return out


def assemble(
    header: bytes,
    body: bytes,
    attachments: list[bytes],
    *,
    signer: SigningKey | None = None,
    signature: bytes | None = None,
) -> bytes:
    """Frame an envelope; sign it with ``signer`` as README says, or reuse ``signature``."""
    payload = payload_section(body, attachments)
    if signer is not None:
        signature = signer.sign(pae(ENVELOPE_SIG_TYPE, header + hashlib.sha256(payload).digest()))
    assert signature is not None
    return MAGIC + struct.pack(">I", len(header)) + header + payload + signature


def resigned(
    parts: Parts,
    signer: SigningKey,
    *,
    header: bytes | None = None,
    body: bytes | None = None,
    attachments: list[bytes] | None = None,
) -> bytes:
    """What a sender holding the node key could send: edited parts, valid node signature."""
    return assemble(
        header if header is not None else parts.header,
        body if body is not None else parts.body,
        attachments if attachments is not None else parts.attachments,
        signer=signer,
    )


def craft(
    sender: Party,
    recipient_key: EncryptionKey,
    recipient: str,
    signed_document: bytes,
    authorisation: bytes,
    attachments: list[bytes],
    *,
    message_id: str,
    sent_at: str = "",
    header_overrides: dict[str, Any] | None = None,
) -> bytes:
    """An envelope built from the README alone (no call to ``seal``)."""
    header_obj: dict[str, Any] = {
        "version": 1,
        "message_id": message_id,
        "sender": sender.code,
        "recipient": recipient,
        "sent_at": sent_at or NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "sender_key_id": sender.node.key_id,
        "recipient_key_id": recipient_key.key_id,
        "suite": recipient_key.suite,
    }
    header_obj.update(header_overrides or {})
    header = canonical_json(header_obj)
    content_key = os.urandom(32)
    inner = canonical_json(
        {
            "document": json.loads(signed_document),
            "authorisation": json.loads(authorisation),
            "content_key": b64e(content_key),
            "chunk_size": CHUNK_SIZE,
        }
    )
    body = recipient_key.seal(inner, pae(BODY_INFO_TYPE, header))
    streams = [
        b"".join(encrypt_stream(attachment_key(content_key, message_id, i), [data], len(data)))
        for i, data in enumerate(attachments)
    ]
    return assemble(header, body, streams, signer=sender.node)


# --- round trips -------------------------------------------------------------------

ATTACHMENT_SETS = {
    "none": [],
    "one-empty": [b""],
    "empty-and-multi-chunk": [b"", os.urandom(2 * CHUNK_SIZE + 17)],
    "three-incl-exact-chunks": [b"%PDF-1.7 " + os.urandom(1000), b"", os.urandom(3 * CHUNK_SIZE)],
}


@pytest.mark.parametrize("name", list(ATTACHMENT_SETS))
def test_seal_open_round_trip(kz: Party, by: Party, docs: Documents, name: str) -> None:
    attachments = ATTACHMENT_SETS[name]
    refs = [attachment_ref(f"file{i}.bin", data) for i, data in enumerate(attachments)]
    request = docs.request(attachments=refs)
    envelope = sealed(kz, by, request, attachments)

    message = open(envelope, by.keys, kz.trusted, NOW)

    assert document_to_json(message.document) == document_to_json(parse_document(request))
    assert message.message_id == request["id"]
    assert message.header.sender == "KZ" and message.header.recipient == "BY"
    assert message.header.suite == by.suite
    assert message.header.sender_key_id == kz.node.key_id
    assert message.header.recipient_key_id == by.decryption.key_id
    assert message.header.sent_at == NOW
    assert message.envelope_sha256 == hashlib.sha256(envelope).digest()
    assert message.authorisation.key == kz.signatory.public
    assert message.authorisation.person == "Иванов Иван Иванович"
    assert [message.attachment_bytes(i, envelope) for i in range(len(attachments))] == attachments


def test_reply_travels_the_other_way(kz: Party, by: Party, docs: Documents) -> None:
    request = docs.request()
    result_bytes = b"protocol of interrogation" * 100
    result = docs.execution_result(request, attachments=[attachment_ref("protocol.pdf", result_bytes)])
    message = open(sealed(by, kz, result, [result_bytes]), kz.keys, by.trusted, NOW)
    assert message.document.kind == "execution_result"
    assert message.document.in_reply_to == request["id"]
    assert message.document.thread_id == request["thread_id"]


def test_open_reads_from_a_file_object_and_streams_attachments(
    kz_pq: Party, by_pq: Party, docs: Documents
) -> None:
    data = os.urandom(CHUNK_SIZE + 5)
    envelope = sealed(kz_pq, by_pq, docs.request(attachments=[attachment_ref("a.bin", data)]), [data])
    source = io.BytesIO(envelope)
    message = open(source, by_pq.keys, kz_pq.trusted, NOW, verify_attachments=False)
    chunks = list(message.attachment_chunks(0, source))
    assert len(chunks) == 2 and b"".join(chunks) == data


def test_seal_stream_takes_attachments_as_iterables(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    data = os.urandom(CHUNK_SIZE * 2 + 999)
    request = docs.request(attachments=[attachment_ref("big.bin", data)])
    pieces = (data[i : i + 1000] for i in range(0, len(data), 1000))
    envelope = b"".join(
        seal_stream(sign(kz_pq, request), kz_pq.authorisation, [pieces], kz_pq.keys, by_pq.trusted, NOW)
    )
    assert open(envelope, by_pq.keys, kz_pq.trusted, NOW).attachment_bytes(0, envelope) == data


def test_layout_matches_the_documented_format(kz: Party, by: Party, docs: Documents) -> None:
    data = os.urandom(CHUNK_SIZE + 1)
    envelope = sealed(kz, by, docs.request(attachments=[attachment_ref("a.bin", data)]), [data])
    parts = Parts(envelope)
    # Ed25519 is deterministic: re-signing the same parts as README describes gives the same bytes.
    assert resigned(parts, kz.node) == envelope
    assert [len(c) for c in parts.chunks(0)] == [SEALED_CHUNK, 1 + 16]
    assert parts.header == canonical_json(parts.header_json())
    framing = read_framing(envelope)
    assert framing.header_bytes == parts.header
    assert framing.envelope_sha256 == hashlib.sha256(envelope).digest()
    assert framing.size == len(envelope)


def test_an_envelope_built_from_the_readme_alone_opens(kz: Party, by: Party, docs: Documents) -> None:
    data = b"attachment"
    request = docs.request(attachments=[attachment_ref("a.txt", data, "text/plain")])
    envelope = craft(
        kz, by.decryption.public, "BY", sign(kz, request), kz.authorisation, [data], message_id=request["id"]
    )
    message = open(envelope, by.keys, kz.trusted, NOW)
    assert message.attachment_bytes(0, envelope) == data


def test_clear_header_holds_only_minimal_metadata(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    request = docs.request()
    envelope = sealed(kz_pq, by_pq, request)
    header = Parts(envelope).header_json()
    assert set(header) == {
        "version",
        "message_id",
        "sender",
        "recipient",
        "sent_at",
        "sender_key_id",
        "recipient_key_id",
        "suite",
    }
    assert header["version"] == 1
    # Kind, purpose, confidentiality and content travel only inside the encryption.
    for secret in ("request", request["purpose"], request["content"], "confidential", "drugs"):
        assert secret.encode() not in envelope


def test_each_seal_is_freshly_encrypted(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    request = docs.request()
    a, b = Parts(sealed(kz_pq, by_pq, request)), Parts(sealed(kz_pq, by_pq, request))
    assert a.header == b.header and a.body != b.body


# --- the node signature comes first ------------------------------------------------


def test_tampered_ciphertext_is_rejected_by_the_node_signature_before_decryption(
    kz: Party, by: Party, docs: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelope = bytearray(sealed(kz, by, docs.request()))
    framing = read_framing(bytes(envelope))
    envelope[framing.body_offset + framing.body_len // 2] ^= 0x01
    calls: list[int] = []
    original = DecryptionKey.open
    monkeypatch.setattr(
        DecryptionKey, "open", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    with pytest.raises(ProlinkError) as exc:
        open(bytes(envelope), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"
    assert calls == []


def test_flipped_signature_is_rejected(kz: Party, by: Party, docs: Documents) -> None:
    envelope = bytearray(sealed(kz, by, docs.request()))
    envelope[-1] ^= 0x80
    with pytest.raises(ProlinkError) as exc:
        open(bytes(envelope), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"


def test_envelope_signed_by_a_stranger_is_rejected(kz: Party, by: Party, docs: Documents) -> None:
    parts = Parts(sealed(kz, by, docs.request()))
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, SigningKey.generate()), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"


def test_header_moved_onto_another_ciphertext_fails(kz: Party, by: Party, docs: Documents) -> None:
    a = Parts(sealed(kz, by, docs.request()))
    b = Parts(sealed(kz, by, docs.request()))
    # As sent: the signature over header A does not cover B's ciphertext.
    with pytest.raises(ProlinkError) as exc:
        open(assemble(a.header, b.body, b.attachments, signature=a.signature), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"
    # Even re-signed with the sender's own node key, HPKE ``info`` binds B's body to B's header.
    with pytest.raises(ProlinkError) as exc:
        open(resigned(b, kz.node, header=a.header), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.decrypt_failed"


def test_header_edited_and_resigned_no_longer_decrypts(kz: Party, by: Party, docs: Documents) -> None:
    parts = Parts(sealed(kz, by, docs.request()))
    header = parts.header_json()
    header["sent_at"] = (NOW - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, kz.node, header=canonical_json(header)), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.decrypt_failed"


# --- addressing and keys -------------------------------------------------------------


def test_envelope_for_another_party_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    uz = make_party("UZ", by.suite)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), uz.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.wrong_recipient"


def test_envelope_claiming_another_sender_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    uz = make_party("UZ", kz.suite)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), by.keys, uz.trusted, NOW)
    assert code_of(exc) == "envelope.unknown_sender"


def test_recipient_without_the_decryption_key_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    forgetful = NodeKeys("BY", by.node, (DecryptionKey.generate(by.suite),))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), forgetful, kz.trusted, NOW)
    assert code_of(exc) == "envelope.unknown_recipient_key"


@pytest.mark.parametrize("suite_name", ["X448/HKDF_SHA512/CHACHA20_POLY1305", "other-suite"])
def test_header_suite_that_does_not_match_the_key_is_refused(
    kz: Party, by: Party, docs: Documents, suite_name: str
) -> None:
    parts = Parts(sealed(kz, by, docs.request()))
    header = parts.header_json()
    header["suite"] = suite_name
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, kz.node, header=canonical_json(header)), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.unsupported_suite"


def test_suite_is_a_parameter_taken_from_the_recipient_bundle(docs: Documents) -> None:
    kz = make_party("KZ", PQ_HYBRID)
    for suite in (PQ_HYBRID, CLASSIC):
        by = make_party("BY", suite)
        envelope = sealed(kz, by, docs.request())
        assert Parts(envelope).header_json()["suite"] == suite
        assert open(envelope, by.keys, kz.trusted, NOW).header.suite == suite


def test_unknown_sender_node_key_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    impostor = replace(kz, keys=NodeKeys("KZ", SigningKey.generate(), kz.keys.decryption))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(impostor, by, docs.request()), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.unknown_key"


def test_node_key_revoked_before_sending_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    revoked = rebuild(kz, revocations=[Revocation(kz.node.key_id, NOW - timedelta(hours=1), "compromised")])
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, revoked.trusted, NOW)
    assert code_of(exc) == "trust.key_revoked"


def test_node_key_revoked_by_a_separate_revocation_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    revocation = issue_revocation(
        kz.node.key_id, NOW - timedelta(minutes=1), "ключ скомпрометирован", kz.root
    )
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, kz.trusted.with_revocation(revocation), NOW)
    assert code_of(exc) == "trust.key_revoked"


def test_envelope_sent_before_the_revocation_time_still_opens(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    later = rebuild(kz, revocations=[Revocation(kz.node.key_id, NOW + timedelta(hours=1), "superseded")])
    assert open(envelope, by.keys, later.trusted, NOW + timedelta(hours=2)).message_id


def test_expired_node_key_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    expired = rebuild(kz, node_valid_until=NOW - timedelta(days=1))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(expired, by, docs.request()), by.keys, expired.trusted, NOW)
    assert code_of(exc) == "trust.key_expired"


def test_node_key_not_yet_valid_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    early = rebuild(kz, node_valid_from=NOW + timedelta(days=1))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(early, by, docs.request()), by.keys, early.trusted, NOW)
    assert code_of(exc) == "trust.key_not_yet_valid"


def test_rotation_old_and_new_node_keys_both_open_during_the_overlap(by: Party, docs: Documents) -> None:
    from protocol import KeyValidity

    old = SigningKey.generate()
    kz = make_party(
        "KZ",
        by.suite,
        extra_signing_keys=[(old.public, KeyValidity(old.key_id, KEYS_FROM, NOW + timedelta(days=7)))],
    )
    with_old = replace(kz, keys=NodeKeys("KZ", old, kz.keys.decryption))
    for sender in (kz, with_old):
        assert open(sealed(sender, by, docs.request()), by.keys, kz.trusted, NOW).document.kind == "request"
    later = NOW + timedelta(days=8)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(with_old, by, docs.request(created_at=later), now=later), by.keys, kz.trusted, later)
    assert code_of(exc) == "trust.key_expired"


# --- clock window ------------------------------------------------------------------


def test_envelope_older_than_the_clock_window_is_replayed(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    assert open(envelope, by.keys, kz.trusted, NOW + DEFAULT_MAX_AGE).message_id
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, kz.trusted, NOW + DEFAULT_MAX_AGE + timedelta(seconds=1))
    assert code_of(exc) == "envelope.replayed"


def test_envelope_from_too_far_in_the_future_is_replayed(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    assert open(envelope, by.keys, kz.trusted, NOW - DEFAULT_MAX_SKEW).message_id
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, kz.trusted, NOW - DEFAULT_MAX_SKEW - timedelta(seconds=1))
    assert code_of(exc) == "envelope.replayed"


def test_sent_at_moved_into_the_window_without_the_node_key_fails(
    kz: Party, by: Party, docs: Documents
) -> None:
    """The clock window reads the claimed ``sent_at``; the node signature then proves it."""
    old = NOW - timedelta(days=5)
    parts = Parts(sealed(kz, by, docs.request(created_at=old - timedelta(hours=1)), now=old))
    header = parts.header_json()
    header["sent_at"] = NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    moved = assemble(canonical_json(header), parts.body, parts.attachments, signature=parts.signature)
    with pytest.raises(ProlinkError) as exc:
        open(moved, by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"
    with pytest.raises(ProlinkError) as exc:
        open(
            assemble(parts.header, parts.body, parts.attachments, signature=parts.signature),
            by.keys,
            kz.trusted,
            NOW,
        )
    assert code_of(exc) == "envelope.replayed"


def test_a_stored_envelope_reopens_with_no_age_limit(kz: Party, by: Party, docs: Documents) -> None:
    envelope = sealed(kz, by, docs.request())
    assert open(envelope, by.keys, kz.trusted, NOW + timedelta(days=3650), max_age=None).message_id


# --- Art. 4: who signed the document ---------------------------------------------


def test_art4_document_signed_outside_authorisation_period_is_rejected(by: Party, docs: Documents) -> None:
    kz = make_party("KZ", by.suite, auth_from=date(2026, 1, 1), auth_until=date(2026, 6, 30))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.authorisation_not_valid"


def test_art4_document_signed_before_authorisation_starts_is_rejected(by: Party, docs: Documents) -> None:
    kz = make_party("KZ", by.suite, auth_from=NOW.date() + timedelta(days=1), auth_until=AUTH_UNTIL)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.authorisation_not_valid"


def test_art4_authorisation_period_includes_its_first_and_last_day(by: Party, docs: Documents) -> None:
    kz = make_party("KZ", by.suite, auth_from=NOW.date(), auth_until=NOW.date())
    start_of_day = NOW.replace(hour=0, minute=0)
    assert open(sealed(kz, by, docs.request(created_at=start_of_day)), by.keys, kz.trusted, NOW).message_id
    assert open(sealed(kz, by, docs.request(created_at=NOW)), by.keys, kz.trusted, NOW).message_id


def test_art4_authorisation_from_another_partys_root_is_rejected(
    kz: Party, by: Party, docs: Documents
) -> None:
    foreign = make_authorisation("KZ", by.root, kz.signatory.public)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request(), authorisation=foreign), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.unknown_key"


def test_art4_authorisation_claiming_the_right_root_but_signed_by_another_is_rejected(
    kz: Party, by: Party, docs: Documents
) -> None:
    foreign = Signed.from_bytes(make_authorisation("KZ", by.root, kz.signatory.public), what="test")
    forged = replace(foreign, key_id=kz.root.key_id).to_bytes()
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request(), authorisation=forged), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.bad_authorisation"


def test_art4_authorisation_to_sign_for_another_party_is_rejected(
    kz: Party, by: Party, docs: Documents
) -> None:
    wrong_party = make_authorisation("BY", kz.root, kz.signatory.public)
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request(), authorisation=wrong_party), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.bad_authorisation"


def test_art4_document_signed_by_a_key_other_than_the_authorised_one_is_rejected(
    kz: Party, by: Party, docs: Documents
) -> None:
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request(), signer=SigningKey.generate()), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.unauthorised_signer"


def test_art4_node_key_cannot_sign_for_a_person(kz: Party, by: Party, docs: Documents) -> None:
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request(), signer=kz.node), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "trust.unauthorised_signer"


def test_art4_forged_signature_under_the_authorised_key_id_is_rejected(
    kz: Party, by: Party, docs: Documents
) -> None:
    request = docs.request()
    genuine = Signed.from_bytes(sign(kz, request), what="test")
    forged = replace(genuine, signature=SigningKey.generate().sign(genuine.signed_bytes())).to_bytes()
    envelope = seal(forged, kz.authorisation, [], kz.keys, by.trusted, NOW)
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_document_signature"


def test_art4_revoked_signatory_key_is_rejected(kz: Party, by: Party, docs: Documents) -> None:
    revoked = rebuild(kz, revocations=[Revocation(kz.signatory.key_id, NOW - timedelta(days=1), "уволен")])
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, docs.request()), by.keys, revoked.trusted, NOW)
    assert code_of(exc) == "trust.key_revoked"


def test_art4_authorisation_is_delivered_with_the_document(kz: Party, by: Party, docs: Documents) -> None:
    message = open(sealed(kz, by, docs.request()), by.keys, kz.trusted, NOW)
    assert message.authorisation_bytes == kz.authorisation
    assert (message.authorisation.valid_from, message.authorisation.valid_until) == (AUTH_FROM, AUTH_UNTIL)


# --- what the node key alone cannot change -------------------------------------------


def test_person_signed_document_cannot_be_moved_to_another_message_id(
    kz: Party, by: Party, docs: Documents
) -> None:
    request = docs.request()
    other_id = docs.request()["id"]
    envelope = craft(
        kz, by.decryption.public, "BY", sign(kz, request), kz.authorisation, [], message_id=other_id
    )
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.id_mismatch"


def test_document_dated_after_the_envelope_is_refused(kz: Party, by: Party, docs: Documents) -> None:
    request = docs.request(created_at=NOW + timedelta(minutes=10))
    with pytest.raises(ProlinkError) as exc:
        open(sealed(kz, by, request), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "document.dated_in_future"


def test_document_for_another_recipient_cannot_be_sealed_or_redirected(
    kz: Party, by: Party, docs: Documents
) -> None:
    uz = make_party("UZ", by.suite)
    with pytest.raises(ProlinkError) as exc:
        sealed(kz, uz, docs.request())
    assert code_of(exc) == "envelope.wrong_party"
    # A node that re-addresses a document signed for BY to UZ is caught on opening.
    request = docs.request()
    envelope = craft(
        kz, uz.decryption.public, "UZ", sign(kz, request), kz.authorisation, [], message_id=request["id"]
    )
    with pytest.raises(ProlinkError) as exc:
        open(envelope, uz.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.wrong_party"


def test_attachment_replaced_by_the_sender_node_breaks_the_person_signed_hash(
    kz: Party, by: Party, docs: Documents
) -> None:
    data = os.urandom(5000)
    request = docs.request(attachments=[attachment_ref("a.bin", data)])
    envelope = sealed(kz, by, request, [data])
    message = open(envelope, by.keys, kz.trusted, NOW)
    parts = Parts(envelope)
    key = attachment_key(message.content_key, request["id"], 0)
    other = b"".join(encrypt_stream(key, [os.urandom(5000)], 5000))
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, kz.node, attachments=[other]), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.attachment_mismatch"


def test_dropping_a_whole_attachment_is_detected(kz: Party, by: Party, docs: Documents) -> None:
    data = [b"one", b"two"]
    request = docs.request(attachments=[attachment_ref(f"{i}.txt", d) for i, d in enumerate(data)])
    parts = Parts(sealed(kz, by, request, data))
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, kz.node, attachments=parts.attachments[:1]), by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.attachment_mismatch"


# --- seal refuses what it cannot vouch for ---------------------------------------------


def test_seal_refuses_an_attachment_that_does_not_match_the_documents_sha256(
    kz_pq: Party, by_pq: Party, docs: Documents
) -> None:
    data = b"the real protocol"
    request = docs.request(attachments=[attachment_ref("a.txt", data)])
    with pytest.raises(ProlinkError) as exc:
        sealed(kz_pq, by_pq, request, [b"the fake protocol"])
    assert code_of(exc) == "envelope.attachment_mismatch"


@pytest.mark.parametrize("actual", [b"short", b"much longer than declared"])
def test_seal_refuses_an_attachment_of_another_size(
    kz_pq: Party, by_pq: Party, docs: Documents, actual: bytes
) -> None:
    request = docs.request(attachments=[attachment_ref("a.txt", b"declared!")])
    with pytest.raises(ProlinkError) as exc:
        sealed(kz_pq, by_pq, request, [actual])
    assert code_of(exc) == "envelope.attachment_size"


def test_seal_refuses_a_different_number_of_attachments(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    request = docs.request(attachments=[attachment_ref("a.txt", b"x")])
    with pytest.raises(ProlinkError) as exc:
        sealed(kz_pq, by_pq, request, [b"x", b"y"])
    assert code_of(exc) == "envelope.attachment_mismatch"


def test_seal_refuses_something_that_is_not_a_signed_document(kz_pq: Party, by_pq: Party) -> None:
    not_a_document = issue_authorisation(
        Authorisation("KZ", "Иванов", "прокурор", kz_pq.signatory.public, AUTH_FROM, AUTH_UNTIL, NOW),
        kz_pq.root,
    )
    with pytest.raises(ProlinkError) as exc:
        seal(not_a_document, kz_pq.authorisation, [], kz_pq.keys, by_pq.trusted, NOW)
    assert code_of(exc) == "envelope.bad_document"


# --- attachment tampering (STREAM) -------------------------------------------------------


def _two_attachment_envelope(kz: Party, by: Party, docs: Documents) -> tuple[bytes, list[bytes]]:
    data = [os.urandom(3 * CHUNK_SIZE + 100), os.urandom(3 * CHUNK_SIZE + 100)]
    request = docs.request(attachments=[attachment_ref(f"{i}.bin", d) for i, d in enumerate(data)])
    return sealed(kz, by, request, data), data


def _tamper(kind: str, parts: Parts, other: Parts) -> list[bytes]:
    """New attachment streams for ``parts`` after one kind of tampering."""
    streams = list(parts.attachments)
    chunks = parts.chunks(0)
    if kind == "truncate_at_chunk_boundary":
        streams[0] = b"".join(chunks[:-1])
    elif kind == "truncate_inside_a_chunk":
        streams[0] = streams[0][:-50]
    elif kind == "reorder_chunks":
        streams[0] = b"".join([chunks[1], chunks[0], *chunks[2:]])
    elif kind == "drop_a_chunk":
        streams[0] = b"".join([chunks[0], *chunks[2:]])
    elif kind == "duplicate_a_chunk":
        streams[0] = b"".join([chunks[0], chunks[0], *chunks[2:]])
    elif kind == "append_a_chunk":
        streams[0] = b"".join([*chunks, chunks[0]])
    elif kind == "swap_chunk_from_another_message":
        streams[0] = b"".join([chunks[0], other.chunks(0)[1], *chunks[2:]])
    elif kind == "swap_two_attachments":
        streams = [streams[1], streams[0]]
    elif kind == "swap_chunks_between_attachments":
        streams[0] = b"".join([chunks[0], parts.chunks(1)[1], *chunks[2:]])
    else:
        raise AssertionError(kind)
    assert streams != parts.attachments
    return streams


TAMPERING = [
    "truncate_at_chunk_boundary",
    "truncate_inside_a_chunk",
    "reorder_chunks",
    "drop_a_chunk",
    "duplicate_a_chunk",
    "append_a_chunk",
    "swap_chunk_from_another_message",
    "swap_two_attachments",
    "swap_chunks_between_attachments",
]


@pytest.fixture(scope="module")
def two_envelopes() -> tuple[Party, Party, bytes, bytes]:
    kz, by = parties(PQ_HYBRID)
    docs = Documents(NOW)
    return kz, by, _two_attachment_envelope(kz, by, docs)[0], _two_attachment_envelope(kz, by, docs)[0]


@pytest.mark.parametrize("kind", TAMPERING)
def test_attachment_tampering_in_transit_fails_the_node_signature(two_envelopes: Any, kind: str) -> None:
    kz, by, envelope, other = two_envelopes
    parts = Parts(envelope)
    tampered = assemble(
        parts.header, parts.body, _tamper(kind, parts, Parts(other)), signature=parts.signature
    )
    with pytest.raises(ProlinkError) as exc:
        open(tampered, by.keys, kz.trusted, NOW)
    assert code_of(exc) == "envelope.bad_signature"


@pytest.mark.parametrize("kind", TAMPERING)
def test_attachment_tampering_is_caught_by_stream_even_under_a_valid_node_signature(
    two_envelopes: Any, kind: str
) -> None:
    kz, by, envelope, other = two_envelopes
    parts = Parts(envelope)
    with pytest.raises(ProlinkError) as exc:
        open(
            resigned(parts, kz.node, attachments=_tamper(kind, parts, Parts(other))), by.keys, kz.trusted, NOW
        )
    assert code_of(exc) == "envelope.attachment_corrupt"


@pytest.mark.parametrize("kind", TAMPERING)
def test_stored_envelope_tampered_after_acceptance_is_caught_when_read(two_envelopes: Any, kind: str) -> None:
    kz, by, envelope, other = two_envelopes
    message = open(envelope, by.keys, kz.trusted, NOW)
    parts = Parts(envelope)
    stored = assemble(parts.header, parts.body, _tamper(kind, parts, Parts(other)), signature=parts.signature)
    with pytest.raises(ProlinkError) as exc:
        for index in range(len(message.attachments)):
            for _ in message.attachment_chunks(index, stored):
                pass
    assert code_of(exc) == "envelope.attachment_corrupt"


def test_untouched_attachments_of_a_stored_envelope_still_read(two_envelopes: Any) -> None:
    kz, by, envelope, _ = two_envelopes
    message = open(envelope, by.keys, kz.trusted, NOW, verify_attachments=False)
    for index, ref in enumerate(message.attachments):
        assert hashlib.sha256(message.attachment_bytes(index, envelope)).hexdigest() == ref.sha256


# --- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: b"",
        lambda e: e[:7],
        lambda e: b"PRLKENV2" + e[8:],
        lambda e: e[:-1],
        lambda e: e + b"\x00",
        lambda e: e[:8] + struct.pack(">I", 1 << 20) + e[12:],
        lambda e: e[:8] + struct.pack(">I", len(e)) + e[12:],
    ],
)
def test_malformed_framing_is_refused_with_a_code(
    kz_pq: Party, by_pq: Party, docs: Documents, mutate: Any
) -> None:
    envelope = sealed(kz_pq, by_pq, docs.request())
    with pytest.raises(ProlinkError) as exc:
        open(mutate(envelope), by_pq.keys, kz_pq.trusted, NOW)
    assert code_of(exc) == "encoding.malformed"


@pytest.mark.parametrize("version", [2, 0, 1.0, True, "1", None])
def test_unsupported_protocol_version_is_refused(
    kz_pq: Party, by_pq: Party, docs: Documents, version: object
) -> None:
    """Only the JSON integer 1 is version 1 (``1.0`` and ``true`` compare equal to 1 in Python)."""
    parts = Parts(sealed(kz_pq, by_pq, docs.request()))
    header = parts.header_json()
    header["version"] = version
    header_bytes = canonical_json(header)  # 1.0 is written as 1.0
    with pytest.raises(ProlinkError) as exc:
        open(resigned(parts, kz_pq.node, header=header_bytes), by_pq.keys, kz_pq.trusted, NOW)
    assert code_of(exc) == "envelope.unsupported_version"


def test_inner_body_with_unknown_chunk_size_is_refused(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    request = docs.request()
    header = Parts(sealed(kz_pq, by_pq, request)).header
    inner = canonical_json(
        {
            "document": json.loads(sign(kz_pq, request)),
            "authorisation": json.loads(kz_pq.authorisation),
            "content_key": b64e(bytes(32)),
            "chunk_size": 4096,
        }
    )
    body = by_pq.decryption.public.seal(inner, pae(BODY_INFO_TYPE, header))
    with pytest.raises(ProlinkError) as exc:
        open(assemble(header, body, [], signer=kz_pq.node), by_pq.keys, kz_pq.trusted, NOW)
    assert code_of(exc) == "envelope.unsupported_chunking"


def test_document_json_in_signed_payload_is_validated(kz_pq: Party, by_pq: Party, docs: Documents) -> None:
    """A person-signed payload that is not a valid document (English text, Art. 8) is refused."""
    request = docs.request()
    doc = document_to_json(parse_document(request))
    doc["content"] = "Please provide the bank records."
    from protocol._trust import sign_statement

    signed = sign_statement(DOCUMENT_TYPE, doc, kz_pq.signatory).to_bytes()
    envelope = craft(
        kz_pq, by_pq.decryption.public, "BY", signed, kz_pq.authorisation, [], message_id=request["id"]
    )
    with pytest.raises(ProlinkError) as exc:
        open(envelope, by_pq.keys, kz_pq.trusted, NOW)
    assert code_of(exc) == "document.not_russian"


def test_sign_document_is_deterministic(kz_pq: Party, docs: Documents) -> None:
    document = parse_document(docs.request())
    assert sign_document(document, kz_pq.signatory) == sign_document(document, kz_pq.signatory)

"""The published test vectors (``tests/vectors/v1.json``) are what the code produces.

* everything deterministic (keys, key ids, fingerprints, bundles, authorisations,
  the revocation, signed documents, envelope headers, receipts) is regenerated
  from the fixed seeds and compared byte for byte with the committed file;
* each recorded envelope still opens, with the fixed keys at the fixed time,
  to the recorded document and attachment.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from protocol import (
    VerifyKey,
    document_to_json,
    fingerprint,
    key_id_for,
    read_framing,
    verify_authorisation,
    verify_bundle,
    verify_receipt,
    verify_revocation,
)
from tests.vectors import generate

VECTORS_TEXT = generate.VECTORS_FILE.read_text(encoding="utf-8")
VECTORS: dict[str, Any] = json.loads(VECTORS_TEXT)
ENVELOPES = {e["id"]: e for e in VECTORS["envelopes"]}


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def test_regenerated_vectors_are_byte_identical_to_the_committed_file() -> None:
    regenerated = generate.render(generate.build(generate.recorded_envelopes(VECTORS)))
    assert regenerated == VECTORS_TEXT, "run: python tests/vectors/generate.py (and review the diff)"


def test_generate_check_mode_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0


def test_both_suites_are_recorded() -> None:
    assert {e["suite"] for e in VECTORS["envelopes"]} == {
        "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM",
        "X25519/HKDF_SHA256/AES_256_GCM",
    }


@pytest.mark.parametrize("env_id", sorted(ENVELOPES))
def test_recorded_envelope_opens_to_the_recorded_content(env_id: str) -> None:
    env = ENVELOPES[env_id]
    envelope = unb64(env["envelope_b64"])
    message = generate.open_recorded(VECTORS, env)
    assert hashlib.sha256(envelope).hexdigest() == env["envelope_sha256"]
    assert message.envelope_sha256.hex() == env["envelope_sha256"]
    assert message.header.suite == env["suite"]
    assert read_framing(envelope).header_bytes == env["header"].encode("utf-8")
    assert message.signed_document == unb64(env["signed_document_b64"])
    assert document_to_json(message.document) == env["signed_document_payload"]
    for index, expected in enumerate(env["attachments"]):
        data = message.attachment_bytes(index, envelope)
        assert data == bytes.fromhex(expected["plaintext_hex"])
        assert hashlib.sha256(data).hexdigest() == expected["sha256"]
        assert len(data) == expected["size"]
        ref = message.attachments[index]
        assert (ref.name, ref.media_type) == (expected["name"], expected["media_type"])


@pytest.mark.parametrize("env_id", sorted(ENVELOPES))
def test_recorded_envelope_signature_input_is_as_documented(env_id: str) -> None:
    env = ENVELOPES[env_id]
    envelope = unb64(env["envelope_b64"])
    header = env["header"].encode("utf-8")
    framing = read_framing(envelope)
    assert bytes.fromhex(env["signature_input_hex"]) == (
        b"DSSEv1 35 application/vnd.prolink.envelope.v1 "
        + str(len(header) + 32).encode()
        + b" "
        + header
        + framing.payload_sha256
    )
    sender = VECTORS["parties"][env["sender"]]
    node = VerifyKey(bytes.fromhex(sender["keys"]["node"]["public_hex"]))
    assert node.verify(framing.signature, bytes.fromhex(env["signature_input_hex"]))


@pytest.mark.parametrize("code", ["KZ", "BY"])
def test_bundle_and_authorisation_verify_from_the_published_fingerprint(code: str) -> None:
    party = VECTORS["parties"][code]
    trusted = verify_bundle(unb64(party["bundle_b64"]), expected_fingerprint=party["fingerprint"])
    assert trusted.party == code
    assert trusted.fingerprint == party["fingerprint"]
    auth = verify_authorisation(unb64(party["authorisation_b64"]), trusted)
    assert auth.key.public.hex() == party["keys"]["signatory"]["public_hex"]


@pytest.mark.parametrize("code", ["KZ", "BY"])
def test_key_ids_and_fingerprints_recompute_from_public_keys(code: str) -> None:
    party = VECTORS["parties"][code]
    for name, key in party["keys"].items():
        alg = key.get("suite", "ed25519")
        assert key_id_for(alg, bytes.fromhex(key["public_hex"])) == key["key_id"], name
    root = VerifyKey(bytes.fromhex(party["keys"]["root"]["public_hex"]))
    assert fingerprint(root) == party["fingerprint"]


def test_revocation_verifies_and_revokes_the_retired_key() -> None:
    kz = VECTORS["parties"]["KZ"]
    trusted = verify_bundle(unb64(kz["bundle_b64"]), expected_fingerprint=kz["fingerprint"])
    rev = verify_revocation(unb64(VECTORS["revocation"]["revocation_b64"]), trusted)
    assert rev.key_id == kz["keys"]["retired_node"]["key_id"]


def test_receipts_verify_against_the_issuers_bundle() -> None:
    for rec in VECTORS["receipts"]:
        env = ENVELOPES[rec["envelope"]]
        issuer = VECTORS["parties"][rec["issuer"]]
        trusted = verify_bundle(unb64(issuer["bundle_b64"]), expected_fingerprint=issuer["fingerprint"])
        result = verify_receipt(
            unb64(rec["receipt_b64"]),
            trusted,
            envelope_sha256=bytes.fromhex(env["envelope_sha256"]),
            message_id=env["signed_document_payload"]["id"],
            sender=env["sender"],
        )
        assert result.accepted


def test_vector_file_holds_no_pem_private_key() -> None:
    assert "PRIVATE KEY" not in VECTORS_TEXT

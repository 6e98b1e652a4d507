"""C2SP signed notes, tlog-checkpoints and tlog-cosignatures: reference vector, round trips, tampering."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from protocol import (
    Checkpoint,
    LogError,
    Note,
    SigningKey,
    cosign,
    find_cosignatures,
    log_origin,
    note_key_id,
    open_checkpoint,
    parse_note,
    parse_signature_line,
    sign_checkpoint,
    sign_note,
    verifier_key,
    verify_cosignature,
    verify_note,
    witness_name,
)

# The reference example of golang.org/x/mod/sumdb/note (note_test.go), also used by the C2SP
# signed-note implementations: an Ed25519 key, a text and the signed note it produces.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
        "vqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)


@pytest.fixture(scope="module")
def peter() -> SigningKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01  # signature type: Ed25519
    return SigningKey(seed[1:])


def test_signed_note_matches_the_go_reference_byte_for_byte(peter: SigningKey) -> None:
    assert verifier_key("PeterNeumann", peter.public) == GO_VKEY
    assert note_key_id("PeterNeumann", 0x01, peter.public.public).hex() == "c74f20a3"
    assert Note(GO_TEXT, (sign_note(GO_TEXT, "PeterNeumann", peter),)).to_bytes() == GO_NOTE
    note = parse_note(GO_NOTE)
    assert note.text == GO_TEXT
    assert verify_note(note, "PeterNeumann", [peter.public]) == peter.public


def test_a_changed_note_text_or_signature_is_refused(peter: SigningKey) -> None:
    with pytest.raises(LogError) as err:
        verify_note(
            parse_note(GO_NOTE.replace(b"cryptography", b"cryptographY")), "PeterNeumann", [peter.public]
        )
    assert err.value.code == "audit.bad_signature"
    other = SigningKey.generate()
    with pytest.raises(LogError) as err:
        verify_note(parse_note(GO_NOTE), "PeterNeumann", [other.public])  # key ID differs: not a known key
    assert err.value.code == "audit.unknown_key"
    with pytest.raises(LogError) as err:
        verify_note(parse_note(GO_NOTE), "SomeoneElse", [peter.public])
    assert err.value.code == "audit.unknown_key"


@pytest.mark.parametrize(
    "bad",
    [
        GO_TEXT,  # no signatures
        GO_TEXT + b"\n",  # blank line, no signature lines
        GO_NOTE.replace(b"\n\n", b"\n"),  # no blank line
        GO_NOTE.replace("\u2014".encode(), b"-"),  # not an em dash
        GO_NOTE.replace(b"PeterNeumann x08", b"Peter+Neumann x08"),  # '+' in a key name
        GO_NOTE.replace(b"x08go", b"x08g!"),  # not base64
        GO_NOTE.rstrip(b"\n"),  # no final newline
        GO_NOTE.replace(b"If you", b"If\tyou"),  # control character
        b"\xff" + GO_NOTE,  # not UTF-8
    ],
)
def test_malformed_notes_are_refused(bad: bytes) -> None:
    with pytest.raises(LogError) as err:
        parse_note(bad)
    assert err.value.code == "audit.malformed_note"


def test_checkpoint_round_trip_in_the_tlog_checkpoint_format() -> None:
    key = SigningKey.generate()
    root = hashlib.sha256(b"root").digest()
    cp = Checkpoint(log_origin("KZ"), 20852163, root, ("time 1764072000",))
    note = sign_checkpoint(cp, key)
    lines = note.decode().split("\n")
    assert lines[:5] == [
        "prolink.kz/audit",
        "20852163",
        base64.b64encode(root).decode(),
        "time 1764072000",
        "",
    ]
    assert lines[5].startswith("\u2014 prolink.kz/audit ")
    raw = base64.b64decode(lines[5].split(" ")[2])
    assert raw[:4] == note_key_id("prolink.kz/audit", 0x01, key.public.public) and len(raw) == 4 + 64
    opened = open_checkpoint(note, "prolink.kz/audit", [key.public])
    assert opened.checkpoint == cp and opened.checkpoint.time == 1764072000 and opened.key == key.public
    # The same format without extension lines, as Go sumdb and Sigsum tools expect it.
    bare = Checkpoint("example.com/behind-the-sofa", 0, root)
    assert bare.body() == b"example.com/behind-the-sofa\n0\n" + base64.b64encode(root) + b"\n"
    assert Checkpoint.parse(bare.body()) == bare


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"prolink.kz/audit\n012\nAAAA\n", "leading zero"),
        (b"prolink.kz/audit\n12\n", "two lines"),
        (b"prolink.kz/audit\n12\n" + base64.b64encode(b"x" * 31) + b"\n", "short root"),
        (b"prolink.kz/audit\n-1\n" + base64.b64encode(b"x" * 32) + b"\n", "negative size"),
        (b"prolink.kz/audit\n1\n" + base64.b64encode(b"x" * 32) + b"\n\n", "empty extension line"),
    ],
)
def test_malformed_checkpoints_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(LogError) as err:
        Checkpoint.parse(body)
    assert err.value.code == "audit.malformed_checkpoint", why


def test_a_tampered_checkpoint_is_refused() -> None:
    key = SigningKey.generate()
    cp = Checkpoint(log_origin("KZ"), 10, hashlib.sha256(b"r").digest())
    note = sign_checkpoint(cp, key)
    with pytest.raises(LogError) as err:
        open_checkpoint(note.replace(b"\n10\n", b"\n11\n"), "prolink.kz/audit", [key.public])
    assert err.value.code == "audit.bad_signature"
    with pytest.raises(LogError) as err:
        open_checkpoint(note, "prolink.by/audit", [key.public])
    assert err.value.code == "audit.wrong_origin"


def test_cosignature_v1_layout_and_verification() -> None:
    log_key, witness = SigningKey.generate(), SigningKey.generate()
    note = parse_note(sign_checkpoint(Checkpoint(log_origin("KZ"), 5, b"\x07" * 32), log_key))
    sig = cosign(note.text, witness_name("BY"), witness, 1764072001)
    # key ID over signature type 0x04; then the big-endian u64 timestamp; then the Ed25519 signature over
    # "cosignature/v1\ntime <t>\n" followed by the whole checkpoint text.
    assert sig.key_id == hashlib.sha256(b"prolink.by/witness\n\x04" + witness.public.public).digest()[:4]
    assert sig.signature[:8] == struct.pack(">Q", 1764072001)
    assert witness.public.verify(sig.signature[8:], b"cosignature/v1\ntime 1764072001\n" + note.text)
    cosigned = note.with_signatures([sig])
    reparsed = parse_note(cosigned.to_bytes())
    assert verify_note(reparsed, "prolink.kz/audit", [log_key.public]) == log_key.public  # log's still fine
    found = find_cosignatures(reparsed, "prolink.by/witness", [witness.public])
    assert found == [(witness.public, 1764072001)]
    assert parse_signature_line(sig.line()) == sig
    # A cosignature is not a note signature: the key IDs differ, so a verifier cannot confuse them.
    assert note_key_id("prolink.by/witness", 0x01, witness.public.public) != sig.key_id


def test_a_tampered_cosignature_is_refused() -> None:
    log_key, witness = SigningKey.generate(), SigningKey.generate()
    note = parse_note(sign_checkpoint(Checkpoint(log_origin("KZ"), 5, b"\x07" * 32), log_key))
    sig = cosign(note.text, witness_name("BY"), witness, 1764072001)
    moved = type(sig)(sig.name, sig.key_id, struct.pack(">Q", 1764072999) + sig.signature[8:])
    with pytest.raises(LogError, match="does not verify"):
        verify_cosignature(note.text, moved, "prolink.by/witness", [witness.public])
    other = parse_note(sign_checkpoint(Checkpoint(log_origin("KZ"), 6, b"\x07" * 32), log_key))
    with pytest.raises(LogError, match="does not verify"):
        verify_cosignature(other.text, sig, "prolink.by/witness", [witness.public])
    with pytest.raises(LogError) as err:
        verify_cosignature(note.text, sig, "prolink.by/witness", [SigningKey.generate().public])
    assert err.value.code == "audit.unknown_key"
    with pytest.raises(LogError, match="does not verify"):
        find_cosignatures(note.with_signatures([moved]), "prolink.by/witness", [witness.public])

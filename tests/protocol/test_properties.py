"""Property tests (hypothesis).

* seal/open round-trips for arbitrary documents (Russian free text with Latin
  names, numbers, quotes and emoji; several kinds; 0-3 attachments of up to a
  few hundred KiB) over both HPKE suites;
* any single-bit flip anywhere in an envelope, a receipt, a bundle, an
  authorisation or a revocation is refused with a ``ProlinkError`` carrying a
  code: never success, never another exception;
* the same holds one layer down, for flips a sender holding the node key could
  make (body or attachment ciphertext, even the inner plaintext, re-signed):
  what the person signed can never change.

Example counts stay modest so that the suite is quick on two cores.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import (
    ACCEPTED,
    CHUNK_SIZE,
    CLASSIC,
    PQ_HYBRID,
    ProlinkError,
    b64e,
    canonical_json,
    document_to_json,
    is_russian,
    issue_revocation,
    open,
    pae,
    parse_document,
    receipt,
    verify_authorisation,
    verify_bundle,
    verify_receipt,
    verify_revocation,
)
from protocol._stream import attachment_key, encrypt_stream
from tests.protocol.conftest import NOW, Documents, attachment_ref, parties, sealed, sign

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLIP_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CODE = re.compile(r"^[a-z_]+\.[a-z_]+$")
BODY_INFO_TYPE = "application/vnd.prolink.envelope-body.v1"
ENVELOPE_SIG_TYPE = "application/vnd.prolink.envelope.v1"

KZ_PQ, BY_PQ = parties(PQ_HYBRID)
KZ_CL, BY_CL = parties(CLASSIC)
DOCS = Documents(NOW)


def assert_refused(exc: BaseException) -> None:
    assert isinstance(exc, ProlinkError), f"{type(exc).__name__}: {exc}"
    assert CODE.match(exc.code), exc.code
    assert exc.message


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- strategies ----------------------------------------------------------------------

CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіўқңәөүұһ"
russian_words = st.text(alphabet=CYRILLIC, min_size=1, max_size=15)
other_tokens = st.one_of(
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=10),  # Latin proper names
    st.from_regex(r"№ ?[0-9]{1,6}(/[0-9]{2,4})?", fullmatch=True),  # case numbers
    st.sampled_from(
        [
            "«",
            "»",
            '"',
            "\\",
            "—",
            "(",
            ")",
            ",",
            ".",
            "\n",
            "\t",
            "😀",
            "KZ-2024/15",
            "ivanov@prokuror.kz",
            "https://gov.kz",
        ]
    ),
)


@st.composite
def russian_text(draw: st.DrawFn, max_words: int = 40) -> str:
    words = draw(st.lists(russian_words, min_size=1, max_size=max_words))
    others = draw(st.lists(other_tokens, max_size=max(1, len(words) // 3)))
    tokens = words + others
    draw(st.randoms()).shuffle(tokens)
    text = " ".join(tokens)
    assume(text.strip() and is_russian(text))
    return text


file_names = st.text(
    alphabet=CYRILLIC + string.ascii_letters + string.digits + " -_.()", min_size=1, max_size=40
).filter(lambda n: n not in (".", "..") and n.strip() == n and n)


@st.composite
def attachment_specs(draw: st.DrawFn, max_count: int = 3) -> list[tuple[str, int, int]]:
    """(name, size, seed) per attachment; the bytes are made from the seed (keeps reports short)."""
    count = draw(st.integers(0, max_count))
    out = []
    for i in range(count):
        size = draw(
            st.one_of(
                st.integers(0, 2000),
                st.integers(0, 300 * 1024),
                st.sampled_from([CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE]),
            )
        )
        out.append((f"{i}-{draw(file_names)}", size, draw(st.integers(0, 2**32))))
    return out


def materialise(specs: list[tuple[str, int, int]]) -> list[tuple[str, bytes]]:
    return [(name, random.Random(seed).randbytes(size)) for name, size, seed in specs]


@st.composite
def documents(draw: st.DrawFn, refs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(sender code, document JSON): a request from KZ or a reply to one from BY."""
    request = DOCS.request(
        attachments=refs,
        grounds=draw(russian_text()),
        purpose=draw(russian_text(8)),
        content=draw(russian_text()),
        other_information=draw(st.one_of(st.just(""), russian_text())),
        urgent=draw(st.booleans()),
        confidentiality=draw(st.sampled_from(["unrestricted", "official_use", "confidential"])),
        created_at=NOW - timedelta(seconds=draw(st.integers(0, 86400))),
    )
    kind = draw(st.sampled_from(["request", "execution_result", "refusal", "acceptance"]))
    if kind == "request":
        return "KZ", request
    request["attachments"] = []
    if kind == "execution_result":
        return "BY", DOCS.execution_result(request, attachments=refs, summary=draw(russian_text()))
    if kind == "refusal":
        return "BY", DOCS.refusal(
            request,
            attachments=refs,
            reason=draw(russian_text()),
            scope=draw(st.sampled_from(["full", "partial"])),
            ground=draw(
                st.sampled_from(
                    [
                        "sovereignty",
                        "security",
                        "public_order",
                        "essential_interests",
                        "national_law",
                        "international_obligations",
                    ]
                )
            ),
        )
    return "BY", DOCS.acceptance(request, attachments=refs, note=draw(st.one_of(st.just(""), russian_text())))


# --- round trips -----------------------------------------------------------------------


def _round_trip(kz: Any, by: Any, data: st.DataObject) -> None:
    files = materialise(data.draw(attachment_specs()))
    sender_code, doc = data.draw(documents([attachment_ref(name, blob) for name, blob in files]))
    sender, recipient = (kz, by) if sender_code == "KZ" else (by, kz)
    blobs = [blob for _, blob in files]
    envelope = sealed(sender, recipient, doc, blobs)
    message = open(envelope, recipient.keys, sender.trusted, NOW)
    assert document_to_json(message.document) == document_to_json(parse_document(doc))
    assert message.header.suite == recipient.suite
    assert [message.attachment_bytes(i, envelope) for i in range(len(blobs))] == blobs
    assert message.envelope_sha256 == hashlib.sha256(envelope).digest()


@SETTINGS
@given(data=st.data())
def test_seal_open_round_trip_pq_hybrid(data: st.DataObject) -> None:
    _round_trip(KZ_PQ, BY_PQ, data)


@SETTINGS
@given(data=st.data())
def test_seal_open_round_trip_classic(data: st.DataObject) -> None:
    _round_trip(KZ_CL, BY_CL, data)


# --- single-bit flips on the wire ------------------------------------------------------------


def _envelope(kz: Any, by: Any, sizes: list[int]) -> bytes:
    files = [(f"{i}.bin", random.Random(i).randbytes(s)) for i, s in enumerate(sizes)]
    doc = DOCS.request(attachments=[attachment_ref(n, d) for n, d in files])
    return sealed(kz, by, doc, [d for _, d in files])


ENVELOPES = {
    "pq-bare": _envelope(KZ_PQ, BY_PQ, []),
    "classic-bare": _envelope(KZ_CL, BY_CL, []),
    "pq-attachments": _envelope(KZ_PQ, BY_PQ, [0, 100, CHUNK_SIZE + 10]),
    "classic-attachments": _envelope(KZ_CL, BY_CL, [0, 100]),
}
RECIPIENT = {"pq": (BY_PQ, KZ_PQ), "classic": (BY_CL, KZ_CL)}


@st.composite
def envelope_and_bit(draw: st.DrawFn) -> tuple[str, int]:
    name = draw(st.sampled_from(sorted(ENVELOPES)))
    size = len(ENVELOPES[name])
    header_end = 12 + int.from_bytes(ENVELOPES[name][8:12], "big")
    # Half the flips land in the magic, header and framing, where parsing happens before any crypto.
    byte = draw(st.one_of(st.integers(0, header_end + 8), st.integers(0, size - 1)))
    return name, byte * 8 + draw(st.integers(0, 7))


@FLIP_SETTINGS
@given(envelope_and_bit())
def test_any_single_bit_flip_in_an_envelope_is_refused_with_a_code(case: tuple[str, int]) -> None:
    name, bit = case
    me, sender = RECIPIENT[name.split("-")[0]]
    try:
        open(flip(ENVELOPES[name], bit), me.keys, sender.trusted, NOW)
    except Exception as exc:
        assert_refused(exc)
    else:
        raise AssertionError(f"flipped bit {bit} of {name} opened")


ENVELOPE_FOR_RECEIPT = ENVELOPES["pq-bare"]
RECEIPT = receipt(ENVELOPE_FOR_RECEIPT, ACCEPTED, None, BY_PQ.keys, NOW)
RECEIPT_CONTEXT = {
    "envelope_sha256": hashlib.sha256(ENVELOPE_FOR_RECEIPT).digest(),
    "message_id": json.loads(
        ENVELOPE_FOR_RECEIPT[12 : 12 + int.from_bytes(ENVELOPE_FOR_RECEIPT[8:12], "big")]
    )["message_id"],
    "sender": "KZ",
}


def test_the_unflipped_statements_verify() -> None:
    verify_receipt(RECEIPT, BY_PQ.trusted, **RECEIPT_CONTEXT)  # type: ignore[arg-type]
    verify_bundle(KZ_PQ.bundle, expected_fingerprint=KZ_PQ.fingerprint)
    verify_authorisation(KZ_PQ.authorisation, KZ_PQ.trusted)
    verify_revocation(REVOCATION, KZ_PQ.trusted)
    for name, envelope in ENVELOPES.items():
        me, sender = RECIPIENT[name.split("-")[0]]
        open(envelope, me.keys, sender.trusted, NOW)


@FLIP_SETTINGS
@given(st.integers(0, len(RECEIPT) * 8 - 1))
def test_any_single_bit_flip_in_a_receipt_is_refused_with_a_code(bit: int) -> None:
    try:
        verify_receipt(flip(RECEIPT, bit), BY_PQ.trusted, **RECEIPT_CONTEXT)  # type: ignore[arg-type]
    except Exception as exc:
        assert_refused(exc)
    else:
        raise AssertionError(f"flipped bit {bit} of the receipt verified")


@FLIP_SETTINGS
@given(st.integers(0, len(KZ_PQ.bundle) * 8 - 1))
def test_any_single_bit_flip_in_a_bundle_is_refused_with_a_code(bit: int) -> None:
    try:
        verify_bundle(flip(KZ_PQ.bundle, bit), expected_fingerprint=KZ_PQ.fingerprint)
    except Exception as exc:
        assert_refused(exc)
    else:
        raise AssertionError(f"flipped bit {bit} of the bundle verified")


@FLIP_SETTINGS
@given(st.integers(0, len(KZ_PQ.authorisation) * 8 - 1))
def test_any_single_bit_flip_in_an_authorisation_is_refused_with_a_code(bit: int) -> None:
    try:
        verify_authorisation(flip(KZ_PQ.authorisation, bit), KZ_PQ.trusted)
    except Exception as exc:
        assert_refused(exc)
    else:
        raise AssertionError(f"flipped bit {bit} of the authorisation verified")


REVOCATION = issue_revocation(KZ_PQ.node.key_id, NOW, "ключ скомпрометирован", KZ_PQ.root)


@FLIP_SETTINGS
@given(st.integers(0, len(REVOCATION) * 8 - 1))
def test_any_single_bit_flip_in_a_revocation_is_refused_with_a_code(bit: int) -> None:
    try:
        verify_revocation(flip(REVOCATION, bit), KZ_PQ.trusted)
    except Exception as exc:
        assert_refused(exc)
    else:
        raise AssertionError(f"flipped bit {bit} of the revocation verified")


# --- one layer down: flips under a valid node signature ------------------------------------------


def _frame(header: bytes, body: bytes, streams: list[bytes], signer: Any) -> bytes:
    payload = len(body).to_bytes(4, "big") + body + len(streams).to_bytes(4, "big")
    for s in streams:
        payload += len(s).to_bytes(8, "big") + s
    signature = signer.sign(pae(ENVELOPE_SIG_TYPE, header + hashlib.sha256(payload).digest()))
    return b"PRLKENV1" + len(header).to_bytes(4, "big") + header + payload + signature


def _split(envelope: bytes) -> tuple[bytes, bytes, list[bytes]]:
    hlen = int.from_bytes(envelope[8:12], "big")
    header, pos = envelope[12 : 12 + hlen], 12 + hlen
    blen = int.from_bytes(envelope[pos : pos + 4], "big")
    body, pos = envelope[pos + 4 : pos + 4 + blen], pos + 4 + blen
    count, pos = int.from_bytes(envelope[pos : pos + 4], "big"), pos + 4
    streams = []
    for _ in range(count):
        n = int.from_bytes(envelope[pos : pos + 8], "big")
        streams.append(envelope[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return header, body, streams


@FLIP_SETTINGS
@given(st.data())
def test_ciphertext_flips_resigned_by_the_sender_node_are_still_refused(data: st.DataObject) -> None:
    header, body, streams = _split(ENVELOPES["pq-attachments"])
    parts = [body, *streams]
    which = data.draw(st.integers(0, len(parts) - 1))
    parts[which] = flip(parts[which], data.draw(st.integers(0, len(parts[which]) * 8 - 1)))
    try:
        open(_frame(header, parts[0], parts[1:], KZ_PQ.node), BY_PQ.keys, KZ_PQ.trusted, NOW)
    except Exception as exc:
        assert_refused(exc)
        assert exc.code in ("envelope.decrypt_failed", "envelope.attachment_corrupt")  # type: ignore[attr-defined]
    else:
        raise AssertionError("a flipped ciphertext opened")


_INNER_DATA = b"attachment under test"
_INNER_DOC = DOCS.request(attachments=[attachment_ref("a.txt", _INNER_DATA)])
_INNER_CONTENT_KEY = bytes(range(32))
INNER = canonical_json(
    {
        "document": json.loads(sign(KZ_PQ, _INNER_DOC)),
        "authorisation": json.loads(KZ_PQ.authorisation),
        "content_key": b64e(_INNER_CONTENT_KEY),
        "chunk_size": CHUNK_SIZE,
    }
)
_INNER_HEADER = _split(sealed(KZ_PQ, BY_PQ, _INNER_DOC, [_INNER_DATA]))[0]
_INNER_STREAM = b"".join(
    encrypt_stream(attachment_key(_INNER_CONTENT_KEY, _INNER_DOC["id"], 0), [_INNER_DATA], len(_INNER_DATA))
)


@FLIP_SETTINGS
@given(st.integers(0, len(INNER) * 8 - 1))
def test_inner_body_flips_by_the_sender_node_never_change_what_the_person_signed(bit: int) -> None:
    """Even the node that encrypts cannot alter the signed document or authorisation unnoticed."""
    body = BY_PQ.decryption.public.seal(flip(INNER, bit), pae(BODY_INFO_TYPE, _INNER_HEADER))
    envelope = _frame(_INNER_HEADER, body, [_INNER_STREAM], KZ_PQ.node)
    try:
        message = open(envelope, BY_PQ.keys, KZ_PQ.trusted, NOW)
    except Exception as exc:
        assert_refused(exc)
    else:
        assert document_to_json(message.document) == document_to_json(parse_document(_INNER_DOC))
        assert message.authorisation_bytes == KZ_PQ.authorisation
        assert message.attachment_bytes(0, envelope) == _INNER_DATA

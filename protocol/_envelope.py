"""The envelope: what one node sends another. Version 1.

Layout (all integers big-endian)::

    magic      8 bytes   b"PRLKENV1"
    header     u32 length, then canonical JSON (clear: version, message id,
               sender, recipient, sent_at, sender key id, recipient key id, suite)
    -- payload section: everything from here to the signature --
    body       u32 length, then HPKE(enc || ciphertext) of the inner body JSON
    attachments u32 count, then per attachment: u64 length, STREAM ciphertext
    signature  64 bytes  Ed25519 by the sender node key over
               PAE("application/vnd.prolink.envelope.v1", header || SHA-256(payload section))

The signature covers the exact header bytes and a hash of the ciphertext, so a
node rejects forgeries before decrypting anything; the header is also bound into
the encryption (HPKE ``info``), so a header moved onto another ciphertext fails.
The inner body holds the person-signed document (DSSE), that person's signing
authorisation (DSSE, from the sender's root key) and the attachments' content key.

``seal`` / ``open`` are the only doors. Pure: no I/O beyond the byte sources the
caller hands in, no clock (``now`` is an argument).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, BinaryIO

from ._documents import AttachmentRef, Document, document_to_json, parse_document
from ._encoding import Signed, b64d, b64e, canonical_json, pae, parse_json
from ._errors import DocumentError, EncodingError, EnvelopeError, TrustError
from ._primitives import DecryptionKey, SigningKey
from ._stream import CHUNK_SIZE, attachment_key, ciphertext_size, decrypt_stream, encrypt_stream
from ._trust import (
    Authorisation,
    TrustedParty,
    format_time,
    parse_time,
    sign_statement,
    verify_authorisation,
    verify_statement,
)

MAGIC = b"PRLKENV1"
PROTOCOL_VERSION = 1
ENVELOPE_SIG_TYPE = "application/vnd.prolink.envelope.v1"
BODY_INFO_TYPE = "application/vnd.prolink.envelope-body.v1"
DOCUMENT_TYPE = "application/vnd.prolink.document+json"
SIGNATURE_SIZE = 64
MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024 * 1024
MAX_ATTACHMENTS = 1000
_READ_BLOCK = 1024 * 1024
_HEADER_KEYS = {
    "version",
    "message_id",
    "sender",
    "recipient",
    "sent_at",
    "sender_key_id",
    "recipient_key_id",
    "suite",
}


@dataclass(frozen=True)
class NodeKeys:
    """A node's own private keys: what ``seal`` signs with and ``open`` decrypts with."""

    party: str
    signing: SigningKey
    decryption: tuple[DecryptionKey, ...]

    def decryption_key(self, key_id: str) -> DecryptionKey:
        for key in self.decryption:
            if key.key_id == key_id:
                return key
        raise EnvelopeError(
            f"this node holds no decryption key {key_id}", code="envelope.unknown_recipient_key"
        )


@dataclass(frozen=True)
class Header:
    message_id: str
    sender: str
    recipient: str
    sent_at: datetime
    sender_key_id: str
    recipient_key_id: str
    suite: str
    version: int = PROTOCOL_VERSION

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "version": self.version,
                "message_id": self.message_id,
                "sender": self.sender,
                "recipient": self.recipient,
                "sent_at": format_time(self.sent_at),
                "sender_key_id": self.sender_key_id,
                "recipient_key_id": self.recipient_key_id,
                "suite": self.suite,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        obj = parse_json(data, what="envelope header")
        if not isinstance(obj, dict) or set(obj) != _HEADER_KEYS:
            raise EncodingError("envelope header has missing or unknown fields")
        if type(obj["version"]) is not int or obj["version"] != PROTOCOL_VERSION:
            raise EnvelopeError(
                f"unsupported protocol version {obj['version']!r}", code="envelope.unsupported_version"
            )
        strings = ("message_id", "sender", "recipient", "sender_key_id", "recipient_key_id", "suite")
        if not all(isinstance(obj[k], str) and obj[k] for k in strings):
            raise EncodingError("envelope header fields must be non-empty strings")
        try:
            uuid.UUID(obj["message_id"])
        except ValueError:
            raise EncodingError("message_id is not a UUID") from None
        return cls(
            obj["message_id"],
            obj["sender"],
            obj["recipient"],
            parse_time(obj["sent_at"], what="sent_at"),
            obj["sender_key_id"],
            obj["recipient_key_id"],
            obj["suite"],
        )


def _body_info(header_bytes: bytes) -> bytes:
    return pae(BODY_INFO_TYPE, header_bytes)


def _to_sign(header_bytes: bytes, payload_hash: bytes) -> bytes:
    return pae(ENVELOPE_SIG_TYPE, header_bytes + payload_hash)


def sign_document(document: Document, signer: SigningKey) -> bytes:
    """The responsible person's signature over the document (DSSE)."""
    return sign_statement(DOCUMENT_TYPE, document_to_json(document), signer).to_bytes()


def envelope_size(body_len: int, header_len: int, attachment_sizes: Sequence[int]) -> int:
    return (
        len(MAGIC)
        + 4
        + header_len
        + 4
        + body_len
        + 4
        + sum(8 + ciphertext_size(s) for s in attachment_sizes)
        + SIGNATURE_SIZE
    )


def _hashing(source: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    """``source``'s pieces as they are, each added to ``digest`` (a ``hashlib`` hash) on its way."""
    for piece in source:
        digest.update(piece)
        yield piece


def seal_stream(
    signed_document: bytes,
    authorisation: bytes,
    attachments: Sequence[Iterable[bytes]],
    sender: NodeKeys,
    recipient: TrustedParty,
    now: datetime,
    document: Document | None = None,
) -> Iterator[bytes]:
    """Yield the envelope's bytes piece by piece; memory stays bounded by one chunk.

    ``attachments[i]`` must produce exactly the bytes described by the document's
    ``attachments[i]`` (size and SHA-256); otherwise sealing fails before the
    signature is produced, so no valid envelope ever carries a wrong attachment.
    """
    # ``document`` is the one just signed (saves re-validating it); otherwise it is parsed back.
    doc = document if document is not None else _own_document(signed_document)
    if doc.sender_party != sender.party or doc.recipient_party != recipient.party:
        raise EnvelopeError("document parties do not match sender and recipient", code="envelope.wrong_party")
    if len(attachments) != len(doc.attachments):
        raise EnvelopeError(
            "attachments do not match the document's list", code="envelope.attachment_mismatch"
        )
    enc_key = recipient.encryption_key(now)
    header = Header(
        doc.id, sender.party, recipient.party, now, sender.signing.key_id, enc_key.key_id, enc_key.suite
    )
    header_bytes = header.to_bytes()
    content_key = os.urandom(32)
    inner = canonical_json(
        {
            "document": parse_json(signed_document, what="signed document"),
            "authorisation": parse_json(authorisation, what="authorisation"),
            "content_key": b64e(content_key),
            "chunk_size": CHUNK_SIZE,
        }
    )
    body = enc_key.seal(inner, _body_info(header_bytes))
    payload_hash = hashlib.sha256()

    def payload(piece: bytes) -> bytes:
        payload_hash.update(piece)
        return piece

    yield MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes
    yield payload(struct.pack(">I", len(body)) + body + struct.pack(">I", len(attachments)))
    for index, (ref, source) in enumerate(zip(doc.attachments, attachments, strict=True)):
        yield payload(struct.pack(">Q", ciphertext_size(ref.size)))
        digest = hashlib.sha256()
        key = attachment_key(content_key, doc.id, index)
        for sealed in encrypt_stream(key, _hashing(source, digest), ref.size):
            yield payload(sealed)
        if digest.hexdigest() != ref.sha256:
            raise EnvelopeError(
                f"attachment {ref.name!r} does not match its SHA-256 in the document",
                code="envelope.attachment_mismatch",
            )
    yield sender.signing.sign(_to_sign(header_bytes, payload_hash.digest()))


def seal(
    signed_document: bytes,
    authorisation: bytes,
    attachments: Sequence[bytes | Iterable[bytes]],
    sender: NodeKeys,
    recipient: TrustedParty,
    now: datetime,
    document: Document | None = None,
) -> bytes:
    """Seal a signed document and its attachments for ``recipient``; the whole envelope as bytes."""
    sources: list[Iterable[bytes]] = [
        [bytes(a)] if isinstance(a, (bytes, bytearray, memoryview)) else a for a in attachments
    ]
    return b"".join(seal_stream(signed_document, authorisation, sources, sender, recipient, now, document))


def _own_document(signed_document: bytes) -> Document:
    signed = Signed.from_bytes(signed_document, what="signed document")
    if signed.payload_type != DOCUMENT_TYPE:
        raise EnvelopeError("not a signed prolink document", code="envelope.bad_document")
    return parse_document(parse_json(signed.payload, what="document"))


# --- opening -----------------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """Where each part of an envelope lies; produced by a single pass over the bytes."""

    header_bytes: bytes
    header: Header
    body_offset: int
    body_len: int
    attachments: tuple[tuple[int, int], ...]  # (offset, length) of each ciphertext stream
    signature: bytes
    payload_sha256: bytes
    envelope_sha256: bytes
    size: int


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise EncodingError(f"envelope is truncated in {what}")
    return data


def _skip_hashing(src: BinaryIO, n: int, hashers: Sequence[Any]) -> None:
    while n > 0:
        block = src.read(min(n, _READ_BLOCK))
        if not block:
            raise EncodingError("envelope is truncated in an attachment")
        for h in hashers:
            h.update(block)
        n -= len(block)


def read_framing(source: bytes | BinaryIO) -> Framing:
    """Parse the framing and hash the envelope in one pass. Verifies nothing cryptographic."""
    src: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    src.seek(0)
    whole = hashlib.sha256()
    payload = hashlib.sha256()

    def take(n: int, what: str, *, in_payload: bool) -> bytes:
        data = _read_exact(src, n, what)
        whole.update(data)
        if in_payload:
            payload.update(data)
        return data

    if take(len(MAGIC), "magic", in_payload=False) != MAGIC:
        raise EncodingError("not a prolink v1 envelope (magic)")
    (header_len,) = struct.unpack(">I", take(4, "header length", in_payload=False))
    if header_len > MAX_HEADER:
        raise EncodingError("envelope header too long")
    header_bytes = take(header_len, "header", in_payload=False)
    header = Header.from_bytes(header_bytes)
    (body_len,) = struct.unpack(">I", take(4, "body length", in_payload=True))
    if body_len > MAX_BODY:
        raise EncodingError("envelope body too long")
    body_offset = src.tell()
    take(body_len, "body", in_payload=True)
    (count,) = struct.unpack(">I", take(4, "attachment count", in_payload=True))
    if count > MAX_ATTACHMENTS:
        raise EncodingError("too many attachments")
    spans = []
    for _ in range(count):
        (length,) = struct.unpack(">Q", take(8, "attachment length", in_payload=True))
        spans.append((src.tell(), length))
        _skip_hashing(src, length, (whole, payload))
    signature = take(SIGNATURE_SIZE, "signature", in_payload=False)
    if src.read(1):
        raise EncodingError("trailing bytes after the envelope signature")
    return Framing(
        header_bytes,
        header,
        body_offset,
        body_len,
        tuple(spans),
        signature,
        payload.digest(),
        whole.digest(),
        src.tell(),
    )


@dataclass(frozen=True)
class VerifiedMessage:
    """An envelope whose node signature, person signature and authorisation all verified."""

    header: Header
    envelope_sha256: bytes
    document: Document
    signed_document: bytes
    authorisation: Authorisation
    authorisation_bytes: bytes
    framing: Framing = field(repr=False)
    content_key: bytes = field(repr=False)

    @property
    def message_id(self) -> str:
        return self.header.message_id

    @property
    def attachments(self) -> tuple[AttachmentRef, ...]:
        return self.document.attachments

    def attachment_chunks(self, index: int, source: bytes | BinaryIO) -> Iterator[bytes]:
        """Decrypt attachment ``index`` from the same envelope bytes, chunk by chunk, checking its SHA-256."""
        ref = self.document.attachments[index]
        offset, length = self.framing.attachments[index]
        src: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        src.seek(offset)

        def raw() -> Iterator[bytes]:
            left = length
            while left:
                block = src.read(min(left, _READ_BLOCK))
                if not block:
                    raise EnvelopeError(
                        "envelope ends inside an attachment", code="envelope.attachment_corrupt"
                    )
                left -= len(block)
                yield block

        digest = hashlib.sha256()
        size = 0
        key = attachment_key(self.content_key, self.header.message_id, index)
        for chunk in decrypt_stream(key, raw(), length):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size != ref.size or digest.hexdigest() != ref.sha256:
            raise EnvelopeError(
                f"attachment {ref.name!r} does not match the signed document",
                code="envelope.attachment_mismatch",
            )

    def attachment_bytes(self, index: int, source: bytes | BinaryIO) -> bytes:
        return b"".join(self.attachment_chunks(index, source))


def check_header(header: Header, me: NodeKeys, sender: TrustedParty) -> None:
    """Addressing checks that need no cryptography."""
    if header.recipient != me.party:
        raise EnvelopeError(
            f"envelope is addressed to {header.recipient}, not {me.party}", code="envelope.wrong_recipient"
        )
    if header.sender != sender.party:
        raise EnvelopeError(
            f"envelope claims sender {header.sender}, expected {sender.party}", code="envelope.unknown_sender"
        )


DEFAULT_MAX_AGE = timedelta(days=4)
MAX_SIGNING_DELAY = timedelta(days=1)
DEFAULT_MAX_SKEW = timedelta(minutes=5)


def open(
    source: bytes | BinaryIO,
    me: NodeKeys,
    sender: TrustedParty,
    now: datetime,
    *,
    max_age: timedelta | None = DEFAULT_MAX_AGE,
    max_skew: timedelta | None = DEFAULT_MAX_SKEW,
    verify_attachments: bool = True,
) -> VerifiedMessage:
    """Verify and decrypt an envelope. The one door through which received content becomes trusted.

    Order matters: framing, addressing, the clock window, the sender node's key
    and signature, and only then decryption, the person's authorisation and
    signature, the document's rules and the attachments.

    The clock window is ``[now - max_age, now + max_skew]``. ``max_age`` is long
    (days, not minutes) because an envelope is sealed once and may wait in the
    sender's outbox while the receiver is down; replays inside the window are
    caught by the receiver's record of message ids, which it keeps for good.
    ``max_age=None, max_skew=None`` is for re-opening an envelope already accepted and stored.
    """
    framing = read_framing(source)
    header = framing.header
    check_header(header, me, sender)
    too_old = max_age is not None and now - header.sent_at > max_age
    too_new = max_skew is not None and header.sent_at - now > max_skew
    if too_old or too_new:
        raise EnvelopeError(
            f"sent_at {format_time(header.sent_at)} is outside the clock window", code="envelope.replayed"
        )
    node_key = sender.signing_key(header.sender_key_id, header.sent_at)
    if not node_key.verify(framing.signature, _to_sign(framing.header_bytes, framing.payload_sha256)):
        raise EnvelopeError("node signature does not verify", code="envelope.bad_signature")
    dkey = me.decryption_key(header.recipient_key_id)
    if dkey.suite != header.suite:
        raise EnvelopeError(
            "header suite does not match the recipient key", code="envelope.unsupported_suite"
        )
    src: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    src.seek(framing.body_offset)
    inner_bytes = dkey.open(_read_exact(src, framing.body_len, "body"), _body_info(framing.header_bytes))
    inner = parse_json(inner_bytes, what="envelope body")
    if not isinstance(inner, dict) or set(inner) != {
        "document",
        "authorisation",
        "content_key",
        "chunk_size",
    }:
        raise EncodingError("envelope body has missing or unknown fields")
    if inner["chunk_size"] != CHUNK_SIZE:
        raise EnvelopeError("unsupported attachment chunk size", code="envelope.unsupported_chunking")
    content_key = b64d(inner["content_key"], what="content_key")
    if len(content_key) != 32:
        raise EncodingError("content key must be 32 bytes")
    authorisation_bytes = Signed.from_json(inner["authorisation"], what="authorisation").to_bytes()
    authorisation = verify_authorisation(authorisation_bytes, sender)
    signed_doc = Signed.from_json(inner["document"], what="signed document")
    if signed_doc.key_id != authorisation.key.key_id:
        raise TrustError(
            "document is not signed by the key the authorisation names", code="trust.unauthorised_signer"
        )
    doc_json = verify_statement(
        signed_doc, DOCUMENT_TYPE, authorisation.key, what="document", code="envelope.bad_document_signature"
    )
    document = parse_document(doc_json)
    _check_document(document, header, authorisation, sender, len(framing.attachments))
    message = VerifiedMessage(
        header,
        framing.envelope_sha256,
        document,
        signed_doc.to_bytes(),
        authorisation,
        authorisation_bytes,
        framing,
        content_key,
    )
    if verify_attachments:
        for index in range(len(framing.attachments)):
            for _ in message.attachment_chunks(index, src):
                pass
    return message


def _check_document(
    document: Document, header: Header, auth: Authorisation, sender: TrustedParty, attachment_count: int
) -> None:
    if document.id != header.message_id:
        raise EnvelopeError("document id differs from the envelope's message id", code="envelope.id_mismatch")
    if document.sender_party != header.sender or document.recipient_party != header.recipient:
        raise EnvelopeError("document parties differ from the envelope's", code="envelope.wrong_party")
    signed_on: date = document.created_at.date()
    if not auth.covers(signed_on):
        raise TrustError(
            f"{auth.person} held no signing authorisation on {signed_on.isoformat()} "
            f"(valid {auth.valid_from.isoformat()}..{auth.valid_until.isoformat()})",
            code="trust.authorisation_not_valid",
        )
    # Revocation is judged at both claimed times, and the document may not claim a date much older
    # than its envelope: a stolen signatory key cannot sign "in the past" to outlive its revocation.
    sender.check_not_revoked(auth.key.key_id, document.created_at, what="signatory key")
    sender.check_not_revoked(auth.key.key_id, header.sent_at, what="signatory key")
    if document.created_at > header.sent_at + timedelta(minutes=5):
        raise DocumentError("document is dated after the envelope was sent", code="document.dated_in_future")
    if document.created_at < header.sent_at - MAX_SIGNING_DELAY:
        raise DocumentError(
            "document was signed too long before its envelope was sealed", code="document.dated_too_early"
        )
    if attachment_count != len(document.attachments):
        raise EnvelopeError(
            "attachment count differs from the signed document", code="envelope.attachment_mismatch"
        )

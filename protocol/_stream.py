"""Streaming authenticated encryption for attachments of any size.

The STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as used by
age and Tink: the plaintext is cut into fixed-size chunks, each sealed with
AES-256-GCM under a per-attachment key with the nonce
``counter (11 bytes, big-endian) || last-chunk flag (1 byte)``.

* reordering or dropping a chunk breaks the counter, so the tag fails;
* truncation at a chunk boundary leaves a final chunk sealed without the
  last-chunk flag, so the tag fails;
* the per-attachment key is derived with HKDF from a random per-message content
  key, the message id and the attachment's index, so chunks swapped between
  attachments or messages never authenticate.

Memory is bounded by one chunk whatever the attachment's size.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import EnvelopeError

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
_MAX_CHUNKS = 1 << 88


def attachment_key(content_key: bytes, message_id: str, index: int) -> bytes:
    info = b"prolink-attachment-v1\x00" + message_id.encode() + b"\x00" + struct.pack(">I", index)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(content_key)


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Number of chunks for ``size`` plaintext bytes; an empty attachment is one empty last chunk."""
    return max(1, -(-size // chunk_size))


def ciphertext_size(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return size + TAG_SIZE * chunk_count(size, chunk_size)


def _nonce(counter: int, last: bool) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise EnvelopeError("attachment too large for the stream counter", code="envelope.too_large")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _rechunk(data: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Cut an iterable of arbitrary pieces into pieces of exactly ``chunk_size`` (the last may be short)."""
    buf = bytearray()
    for piece in data:
        if not buf and len(piece) == chunk_size:
            yield bytes(piece)
            continue
        buf += piece
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    if buf:
        yield bytes(buf)


def encrypt_stream(
    key: bytes, plaintext: Iterable[bytes], size: int, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield the sealed chunks of exactly ``size`` plaintext bytes.

    Raises ``EnvelopeError(envelope.attachment_size)`` if the plaintext is not
    ``size`` bytes long: the size is framed before the stream, so it must be known.
    """
    aead = AESGCM(key)
    total = chunk_count(size, chunk_size)
    seen = 0
    counter = 0
    for counter, chunk in enumerate(_rechunk(plaintext, chunk_size)):
        seen += len(chunk)
        if counter >= total or seen > size:
            raise EnvelopeError("attachment is longer than declared", code="envelope.attachment_size")
        yield aead.encrypt(_nonce(counter, counter == total - 1), chunk, None)
    if seen != size:
        raise EnvelopeError("attachment is shorter than declared", code="envelope.attachment_size")
    if size == 0:
        yield aead.encrypt(_nonce(0, True), b"", None)


def decrypt_stream(
    key: bytes, ciphertext: Iterable[bytes], ciphertext_len: int, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise on any tampering.

    ``ciphertext_len`` comes from the envelope's framing (itself covered by the
    node signature); the chunk that ends there must carry the last-chunk flag.
    """
    aead = AESGCM(key)
    sealed_chunk = chunk_size + TAG_SIZE
    total = -(-ciphertext_len // sealed_chunk) if ciphertext_len else 0
    if total == 0 or ciphertext_len - (total - 1) * sealed_chunk < TAG_SIZE:
        raise EnvelopeError("attachment stream is truncated", code="envelope.attachment_corrupt")
    counter = -1
    for counter, chunk in enumerate(_rechunk(ciphertext, sealed_chunk)):
        try:
            yield aead.decrypt(_nonce(counter, counter == total - 1), chunk, None)
        except InvalidTag:
            raise EnvelopeError(
                f"attachment chunk {counter} fails authentication", code="envelope.attachment_corrupt"
            ) from None
    if counter != total - 1:
        raise EnvelopeError("attachment stream is truncated", code="envelope.attachment_corrupt")

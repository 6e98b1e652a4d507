"""STREAM: chunked AES-256-GCM for attachments of any size.

Small chunk sizes keep the tests fast; one test uses the real ``CHUNK_SIZE``.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import CHUNK_SIZE, EnvelopeError, decrypt_stream, encrypt_stream
from protocol._stream import TAG_SIZE, attachment_key, chunk_count, ciphertext_size

KEY = bytes(range(32))
SMALL = 64  # chunk size used by most tests
SEALED = SMALL + TAG_SIZE


def enc(data: bytes, key: bytes = KEY, chunk: int = SMALL) -> list[bytes]:
    return list(encrypt_stream(key, [data], len(data), chunk))


def dec(chunks: list[bytes], key: bytes = KEY, chunk: int = SMALL) -> bytes:
    blob = b"".join(chunks)
    return b"".join(decrypt_stream(key, [blob], len(blob), chunk))


def corrupt(chunks: list[bytes], key: bytes = KEY) -> str:
    with pytest.raises(EnvelopeError) as exc:
        dec(chunks, key)
    return exc.value.code


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 7])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    chunks = enc(data)
    assert len(chunks) == chunk_count(size, SMALL)
    assert sum(map(len, chunks)) == ciphertext_size(size, SMALL)
    assert dec(chunks) == data


def test_input_pieces_of_any_shape_give_the_same_ciphertext() -> None:
    data = os.urandom(5 * SMALL + 3)
    whole = enc(data)
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert list(encrypt_stream(KEY, pieces, len(data), SMALL)) == whole
    assert list(encrypt_stream(KEY, [b"", data, b""], len(data), SMALL)) == whole


def test_output_chunks_are_fixed_size_except_the_last() -> None:
    chunks = enc(os.urandom(3 * SMALL + 5))
    assert [len(c) for c in chunks] == [SEALED, SEALED, SEALED, 5 + TAG_SIZE]


def test_nonce_is_an_11_byte_counter_and_a_last_chunk_flag() -> None:
    """The documented nonce layout, checked with AES-GCM directly."""
    data = os.urandom(2 * SMALL + 10)
    chunks = enc(data)
    aead = AESGCM(KEY)
    nonces = [
        (0).to_bytes(11, "big") + b"\x00",
        (1).to_bytes(11, "big") + b"\x00",
        (2).to_bytes(11, "big") + b"\x01",
    ]
    assert b"".join(aead.decrypt(n, c, None) for n, c in zip(nonces, chunks, strict=True)) == data


def test_empty_attachment_is_one_empty_last_chunk() -> None:
    (chunk,) = enc(b"")
    assert AESGCM(KEY).decrypt(bytes(11) + b"\x01", chunk, None) == b""


def test_attachment_key_derivation_is_as_documented() -> None:
    content_key = os.urandom(32)
    mid = "0b0e5d8e-6a51-4c0e-9d3c-2f9d6a7b1c11"
    info = b"prolink-attachment-v1\x00" + mid.encode() + b"\x00" + (3).to_bytes(4, "big")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(content_key)
    assert attachment_key(content_key, mid, 3) == expected


def test_attachment_keys_differ_per_message_and_index() -> None:
    ck = os.urandom(32)
    keys = {attachment_key(ck, m, i) for m in ("a", "b") for i in (0, 1)}
    assert len(keys) == 4


# --- tampering -------------------------------------------------------------------


@pytest.fixture
def three_chunks() -> list[bytes]:
    return enc(os.urandom(3 * SMALL + 10))  # 4 chunks: 3 full, 1 short


def test_truncation_at_a_chunk_boundary_is_detected(three_chunks: list[bytes]) -> None:
    assert corrupt(three_chunks[:-1]) == "envelope.attachment_corrupt"


def test_truncation_of_an_exact_multiple_is_detected() -> None:
    chunks = enc(os.urandom(3 * SMALL))
    assert corrupt(chunks[:-1]) == "envelope.attachment_corrupt"


def test_truncation_inside_a_chunk_is_detected(three_chunks: list[bytes]) -> None:
    assert corrupt([*three_chunks[:-1], three_chunks[-1][:-1]]) == "envelope.attachment_corrupt"


def test_truncation_to_less_than_a_tag_is_detected() -> None:
    blob = b"".join(enc(b"abc"))
    with pytest.raises(EnvelopeError) as exc:
        list(decrypt_stream(KEY, [blob[: TAG_SIZE - 1]], TAG_SIZE - 1, SMALL))
    assert exc.value.code == "envelope.attachment_corrupt"


def test_empty_ciphertext_is_detected() -> None:
    with pytest.raises(EnvelopeError) as exc:
        list(decrypt_stream(KEY, [], 0, SMALL))
    assert exc.value.code == "envelope.attachment_corrupt"


def test_source_shorter_than_the_declared_length_is_detected(three_chunks: list[bytes]) -> None:
    blob = b"".join(three_chunks)
    with pytest.raises(EnvelopeError) as exc:
        list(decrypt_stream(KEY, [blob[: 2 * SEALED]], len(blob), SMALL))
    assert exc.value.code == "envelope.attachment_corrupt"


def test_reordering_is_detected(three_chunks: list[bytes]) -> None:
    c = three_chunks
    assert corrupt([c[1], c[0], c[2], c[3]]) == "envelope.attachment_corrupt"


def test_dropping_a_chunk_is_detected(three_chunks: list[bytes]) -> None:
    c = three_chunks
    assert corrupt([c[0], c[2], c[3]]) == "envelope.attachment_corrupt"


def test_duplicating_a_chunk_is_detected(three_chunks: list[bytes]) -> None:
    c = three_chunks
    assert corrupt([c[0], c[0], c[1], c[2], c[3]]) == "envelope.attachment_corrupt"


def test_appending_after_the_last_chunk_is_detected(three_chunks: list[bytes]) -> None:
    assert corrupt([*three_chunks, three_chunks[0]]) == "envelope.attachment_corrupt"


def test_removing_the_last_flag_by_padding_is_detected() -> None:
    """A full last chunk followed by an attacker's empty 'last' chunk does not authenticate."""
    chunks = enc(os.urandom(2 * SMALL))
    fake_last = AESGCM(os.urandom(32)).encrypt(bytes(11) + b"\x01", b"", None)
    assert corrupt([*chunks, fake_last]) == "envelope.attachment_corrupt"


def test_swapping_chunks_between_messages_is_detected() -> None:
    ck = os.urandom(32)
    data = os.urandom(3 * SMALL)
    key_a, key_b = attachment_key(ck, "message-a", 0), attachment_key(ck, "message-b", 0)
    a, b = enc(data, key_a), enc(data, key_b)
    assert corrupt([a[0], b[1], a[2]], key_a) == "envelope.attachment_corrupt"


def test_swapping_chunks_between_attachments_of_one_message_is_detected() -> None:
    ck = os.urandom(32)
    data = os.urandom(3 * SMALL)
    key0, key1 = attachment_key(ck, "m", 0), attachment_key(ck, "m", 1)
    a0, a1 = enc(data, key0), enc(data, key1)
    assert corrupt(a1, key0) == "envelope.attachment_corrupt"
    assert corrupt([a0[0], a1[1], a0[2]], key0) == "envelope.attachment_corrupt"


@pytest.mark.parametrize("position", [0, SEALED - 1, SEALED, 2 * SEALED + 5])
def test_any_flipped_bit_is_detected(three_chunks: list[bytes], position: int) -> None:
    blob = bytearray(b"".join(three_chunks))
    blob[position] ^= 0x10
    assert corrupt([bytes(blob)]) == "envelope.attachment_corrupt"


def test_wrong_key_is_detected(three_chunks: list[bytes]) -> None:
    assert corrupt(three_chunks, os.urandom(32)) == "envelope.attachment_corrupt"


def test_plaintext_before_the_bad_chunk_may_have_been_yielded_but_the_stream_fails(
    three_chunks: list[bytes],
) -> None:
    """Streaming consumers must treat output as provisional until the iterator finishes."""
    blob = b"".join(three_chunks[:-1])
    out = []
    with pytest.raises(EnvelopeError):
        for piece in decrypt_stream(KEY, [blob], len(blob), SMALL):
            out.append(piece)
    assert len(out) == 2  # chunks 0 and 1 authenticated; chunk 2 is not a valid last chunk


# --- declared size -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "actual"), [(10, 9), (10, 11), (0, 1), (SMALL, SMALL + 1), (2 * SMALL, SMALL)]
)
def test_plaintext_must_be_exactly_the_declared_size(declared: int, actual: int) -> None:
    with pytest.raises(EnvelopeError) as exc:
        list(encrypt_stream(KEY, [bytes(actual)], declared, SMALL))
    assert exc.value.code == "envelope.attachment_size"


def test_ciphertext_size_formula() -> None:
    assert ciphertext_size(0) == TAG_SIZE
    assert ciphertext_size(1) == 1 + TAG_SIZE
    assert ciphertext_size(CHUNK_SIZE) == CHUNK_SIZE + TAG_SIZE
    assert ciphertext_size(CHUNK_SIZE + 1) == CHUNK_SIZE + 1 + 2 * TAG_SIZE


# --- the real chunk size and bounded memory ----------------------------------------------


def _generated(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (piece // 32)
    left = total
    while left:
        n = min(left, piece)
        yield block[:n]
        left -= n


def test_real_chunk_size_round_trip() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 123)
    blob = b"".join(encrypt_stream(KEY, [data], len(data)))
    assert len(blob) == ciphertext_size(len(data))
    assert b"".join(decrypt_stream(KEY, [blob], len(blob))) == data


def test_memory_stays_bounded_by_a_chunk_whatever_the_size() -> None:
    """32 MiB through encrypt and decrypt with the peak traced allocation far below the size."""
    total = 32 << 20
    tracemalloc.start()
    try:
        ciphertext = encrypt_stream(KEY, _generated(total), total)
        digest = hashlib.sha256()
        for piece in decrypt_stream(KEY, ciphertext, ciphertext_size(total)):
            digest.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    for piece in _generated(total):
        expected.update(piece)
    assert digest.digest() == expected.digest()
    assert peak < 8 << 20, f"peak {peak} bytes"

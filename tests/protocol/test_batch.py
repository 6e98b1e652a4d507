"""The batch framing of the peer API: exact round trips, and every malformed batch a coded error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import BATCH_MAGIC, BatchError, ProlinkError, decode_batch, encode_batch

LIMITS = {"max_items": 64, "max_envelope_bytes": 4096}
envelopes = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20)


@given(envelopes)
def test_batch_round_trips_in_order(items: list[bytes]) -> None:
    assert decode_batch(encode_batch(items), **LIMITS) == items


@given(envelopes, st.data())
def test_any_truncation_of_a_batch_is_refused_with_a_code(items: list[bytes], data: st.DataObject) -> None:
    raw = encode_batch(items)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BatchError) as caught:
        decode_batch(raw[:cut], **LIMITS)
    assert caught.value.code == "batch.malformed"


@given(envelopes, st.binary(min_size=1, max_size=10))
def test_bytes_after_the_last_envelope_are_refused(items: list[bytes], extra: bytes) -> None:
    with pytest.raises(BatchError, match="after the last envelope"):
        decode_batch(encode_batch(items) + extra, **LIMITS)


def test_batch_layout_is_magic_count_then_length_prefixed_envelopes() -> None:
    expected = BATCH_MAGIC + struct.pack(">II", 2, 2) + b"ab" + struct.pack(">I", 1) + b"c"
    assert encode_batch([b"ab", b"c"]) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "batch.malformed"),
        (b"PRLKENV1" + struct.pack(">I", 1), "batch.malformed"),
        (BATCH_MAGIC + struct.pack(">I", 0), "batch.malformed"),
        (BATCH_MAGIC + struct.pack(">I", 65), "batch.too_many"),
        (BATCH_MAGIC + struct.pack(">II", 1, 0), "batch.malformed"),
        (BATCH_MAGIC + struct.pack(">II", 1, 4097) + b"x" * 4097, "batch.too_large"),
    ],
)
def test_malformed_or_oversized_batches_get_stable_codes(raw: bytes, code: str) -> None:
    with pytest.raises(ProlinkError) as caught:
        decode_batch(raw, **LIMITS)
    assert caught.value.code == code


def test_an_empty_batch_or_empty_envelope_cannot_be_encoded() -> None:
    with pytest.raises(BatchError):
        encode_batch([])
    with pytest.raises(BatchError):
        encode_batch([b"x", b""])

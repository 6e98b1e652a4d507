"""Several envelopes in one delivery: the batch framing of the peer API.

A batch is transport, not a new kind of message: each envelope in it is
exactly the bytes a single delivery would carry, verified, stored and answered
with its own signed receipt. Batching only saves round trips and lets the
receiver commit many envelopes in one transaction::

    batch = "PRLKBAT1" || count:u32 || (length:u32 || envelope) * count

All integers big-endian. ``count`` is at least 1. The reader is strict: a
length of zero, a count or length over the caller's limits, missing bytes or
bytes after the last envelope are ``batch.malformed``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ._errors import EncodingError

BATCH_MAGIC = b"PRLKBAT1"
_U32 = struct.Struct(">I")


class BatchError(EncodingError):
    """Bytes that are not a well-formed batch of envelopes (or one over the limits)."""

    code = "batch.malformed"


def encode_batch(envelopes: Iterable[bytes]) -> bytes:
    """The batch carrying ``envelopes`` in order."""
    items = list(envelopes)
    if not items:
        raise BatchError("a batch carries at least one envelope")
    parts = [BATCH_MAGIC, _U32.pack(len(items))]
    for envelope in items:
        if not envelope:
            raise BatchError("an envelope in a batch cannot be empty")
        parts.append(_U32.pack(len(envelope)))
        parts.append(envelope)
    return b"".join(parts)


def decode_batch(data: bytes, *, max_items: int, max_envelope_bytes: int) -> list[bytes]:
    """The envelopes of a batch, in order; ``BatchError`` if it is malformed or over a limit."""
    view = memoryview(data)
    if len(view) < len(BATCH_MAGIC) + 4 or bytes(view[: len(BATCH_MAGIC)]) != BATCH_MAGIC:
        raise BatchError("not a prolink batch (magic)")
    (count,) = _U32.unpack_from(view, len(BATCH_MAGIC))
    if count == 0:
        raise BatchError("a batch carries at least one envelope")
    if count > max_items:
        raise BatchError(
            f"a batch may carry at most {max_items} envelopes, this one {count}", code="batch.too_many"
        )
    offset = len(BATCH_MAGIC) + 4
    out: list[bytes] = []
    for index in range(count):
        if offset + 4 > len(view):
            raise BatchError(f"batch ends before envelope {index}")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if length == 0:
            raise BatchError(f"envelope {index} of the batch is empty")
        if length > max_envelope_bytes:
            raise BatchError(
                f"envelope {index} of the batch is over {max_envelope_bytes} bytes", code="batch.too_large"
            )
        if offset + length > len(view):
            raise BatchError(f"batch ends inside envelope {index}")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise BatchError(f"{len(view) - offset} bytes after the last envelope of the batch")
    return out

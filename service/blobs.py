"""Envelope bytes in the database, in bounded memory whatever their size.

An envelope is stored exactly as sent or received (it is the evidence), cut
into ``BlobChunk`` rows of ``BLOB_CHUNK_SIZE`` bytes, inside the caller's
transaction, so that an envelope and the records that refer to it commit or
vanish together. Writing and reading hold at most about one chunk in memory;
nothing here ever loads a whole blob unless asked to with ``blob_bytes``.

Chunks are read one row per query on purpose: a plain cursor on psycopg
fetches a whole result set into client memory, and one row at a time needs no
server-side cursor trickery on either backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from protocol import ProlinkError
from service.db import read_only, unwrapped_reads, write_or_defer
from service.models import BLOB_CHUNK_SIZE, Blob, BlobChunk

#: ``blob_bytes`` refuses to load more than this unless told otherwise.
SMALL_BLOB_LIMIT = 64 * 1024 * 1024


class BlobError(ProlinkError):
    """Base class for blob storage errors (part of the one error tree, so the API maps their codes)."""

    code = "storage.blob"


class BlobTooLarge(BlobError):
    """The bytes offered (or asked for in one piece) exceed the allowed size."""

    code = "storage.blob_too_large"


class BlobNotFound(BlobError):
    """No blob with this id."""

    code = "storage.blob_not_found"


class BlobCorrupt(BlobError):
    """Stored chunks do not add up to the recorded size or SHA-256 (missing or altered rows)."""

    code = "storage.blob_corrupt"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    id: int
    sha256: str  # lower-case hex
    size: int


def write_blob(
    session: Session,
    chunks: Iterable[bytes],
    *,
    max_size: int | None = None,
    chunk_size: int = BLOB_CHUNK_SIZE,
) -> BlobInfo:
    """Store the concatenation of ``chunks`` as a new blob in ``session``'s transaction.

    The input may come in pieces of any size; it is re-cut into rows of
    ``chunk_size`` bytes and hashed on the way. Raises ``BlobTooLarge`` (and
    leaves the transaction for the caller to roll back) as soon as more than
    ``max_size`` bytes arrive, without reading the rest.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    conn = session.connection()
    blob_id: int | None = None  # the row is inserted with the first full chunk, or at the end
    digest = hashlib.sha256()
    size = 0
    seq = 0
    buf = bytearray()

    def flush(data: bytes) -> None:
        nonlocal seq, blob_id
        if blob_id is None:
            blob_id = _insert_blob(conn, "", 0, 0)
        conn.execute(_INSERT_CHUNK, {"blob_id": blob_id, "seq": seq, "data": data})
        seq += 1

    for piece in chunks:
        if not piece:
            continue
        size += len(piece)
        if max_size is not None and size > max_size:
            raise BlobTooLarge(f"blob exceeds {max_size} bytes")
        digest.update(piece)
        view = memoryview(piece)
        while view:
            take = min(chunk_size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == chunk_size:
                flush(bytes(buf))
                buf.clear()

    sha256 = digest.hexdigest()
    if blob_id is None:
        # Less than one chunk (most envelopes): the blob row is written once, with its final values.
        blob_id = _insert_blob(conn, sha256, size, 1 if buf else 0)
        if buf:
            flush(bytes(buf))
    else:
        if buf:
            flush(bytes(buf))
        conn.execute(
            update(Blob).where(col(Blob.id) == blob_id).values(sha256=sha256, size=size, chunk_count=seq)
        )
    buf.clear()
    return BlobInfo(id=blob_id, sha256=sha256, size=size)


def write_blobs(
    session: Session,
    contents: Sequence[bytes | Iterable[bytes]],
    *,
    max_size: int | None = None,
    defer: list[tuple[Any, Any]] | None = None,
    ids: Sequence[int] | None = None,
) -> list[BlobInfo]:
    """Store each of ``contents`` as a new blob: all together if every one is in memory (``bytes``) and
    within ``max_size`` (``write_small_blobs``), else each alone, a stream read as it is stored
    (``write_blob``, which raises ``BlobTooLarge`` past ``max_size``). ``defer`` and ``ids``: as for
    ``write_small_blobs`` (a stream is always written at once, with an id of its own)."""
    if all(isinstance(c, bytes) and (max_size is None or len(c) <= max_size) for c in contents):
        return write_small_blobs(session, cast(Sequence[bytes], contents), defer=defer, ids=ids)
    return [write_blob(session, [c] if isinstance(c, bytes) else c, max_size=max_size) for c in contents]


def write_small_blobs(
    session: Session,
    envelopes: Sequence[bytes],
    *,
    chunk_size: int = BLOB_CHUNK_SIZE,
    defer: list[tuple[Any, Any]] | None = None,
    ids: Sequence[int] | None = None,
) -> list[BlobInfo]:
    """Store several envelopes already in memory as new blobs, in ``session``'s transaction: one insert of
    all the blob rows and one of all their chunks, instead of two or more statements each (``write_blob``).

    For the envelopes that sends without attachments seal into memory; a stream goes to ``write_blob``.
    With ``defer``, the insert of the chunks is appended to it (the blob rows are
    inserted at once: their ids are needed), for the caller to run with its other
    writes (``db.write_pipelined``). ``ids``: one new id per envelope, drawn by the
    caller (``db.new_ids``): then the blob rows are written with the chunks, not at once.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not envelopes:
        return []
    conn = session.connection()
    infos = [(hashlib.sha256(data).hexdigest(), len(data)) for data in envelopes]
    rows = [{"sha256": sha256, "size": size, "chunk_count": -(-size // chunk_size)} for sha256, size in infos]
    writes: list[tuple[Any, Any]] = []
    if ids is None:
        # (returned in the order of the rows)
        ids = [int(i) for i in conn.execute(_INSERT_BLOBS, rows).scalars()]  # type: ignore[arg-type]
    else:
        writes.append(
            (_INSERT_BLOBS_WITH_IDS, [{**row, "id": blob_id} for row, blob_id in zip(rows, ids, strict=True)])
        )
    if len(ids) != len(envelopes):  # pragma: no cover - the database assigns one id per row
        raise BlobError("the database assigned no id to some blobs")
    chunks = [
        {"blob_id": blob_id, "seq": seq, "data": data[start : start + chunk_size]}
        for blob_id, data in zip(ids, envelopes, strict=True)
        for seq, start in enumerate(range(0, len(data), chunk_size))
    ]
    if chunks:
        writes.append((_INSERT_CHUNK, chunks))
    write_or_defer(conn, writes, defer)
    return [
        BlobInfo(id=blob_id, sha256=sha256, size=size)
        for blob_id, (sha256, size) in zip(ids, infos, strict=True)
    ]


_INSERT_BLOB = insert(Blob).returning(col(Blob.id))
# Several rows in one statement, their ids returned in the order the rows were given (insertmanyvalues).
_INSERT_BLOBS = insert(Blob).returning(col(Blob.id), sort_by_parameter_order=True)
_INSERT_BLOBS_WITH_IDS = insert(Blob).inline()  # ids given (``db.new_ids``): may be pipelined
_INSERT_CHUNK = insert(BlobChunk).inline()  # no RETURNING: may be pipelined


def _insert_blob(conn: Connection, sha256: str, size: int, chunk_count: int) -> int:
    params = {"sha256": sha256, "size": size, "chunk_count": chunk_count}
    new_id = conn.execute(_INSERT_BLOB, params).scalar_one()
    if new_id is None:  # pragma: no cover - the database always assigns one
        raise BlobError("the database assigned no blob id")
    return int(new_id)


def blob_info(source: Session | Engine, blob_id: int) -> BlobInfo:
    """Id, SHA-256 and size of a stored blob; ``BlobNotFound`` if there is none."""
    if isinstance(source, Engine):
        with unwrapped_reads(source).connect() as conn:  # one statement
            return _info(conn, blob_id)
    return _info(source.connection(), blob_id)


def read_blob(source: Session | Engine, blob_id: int, *, verify: bool = True) -> Iterator[bytes]:
    """Yield a blob's bytes chunk by chunk, holding one chunk in memory at a time.

    Given a ``Session``, reads inside its transaction (the session must stay
    open while iterating). Given an ``Engine``, opens a read-only connection
    for the duration of the iteration. With ``verify`` (the default), the size
    and SHA-256 are checked as the chunks go by and ``BlobCorrupt`` is raised
    at the first inconsistency, before the last chunk is yielded.
    """
    if isinstance(source, Engine):
        return _read_with_engine(source, blob_id, verify)
    return _read(source.connection(), blob_id, verify)


def blob_bytes(source: Session | Engine, blob_id: int, *, max_size: int = SMALL_BLOB_LIMIT) -> bytes:
    """A whole (small) blob in memory; ``BlobTooLarge`` if it is bigger than ``max_size``."""
    info = blob_info(source, blob_id)
    if info.size > max_size:
        raise BlobTooLarge(f"blob {blob_id} has {info.size} bytes, more than {max_size}")
    return b"".join(read_blob(source, blob_id))


def small_blobs(engine: Engine, blob_ids: list[int], *, max_total: int = SMALL_BLOB_LIMIT) -> list[bytes]:
    """Several whole (small) blobs, verified, in order, read with two queries (``unwrapped_reads``: a blob
    never changes once written, so they need no transaction around them).

    ``BlobTooLarge`` if together they exceed ``max_total`` (checked before any chunk is read),
    ``BlobNotFound`` or ``BlobCorrupt`` as for ``read_blob``.
    """
    if not blob_ids:
        return []
    with unwrapped_reads(engine).connect() as conn:
        heads = {r.id: r for r in conn.execute(_HEADS, {"ids": blob_ids})}
        missing = [i for i in blob_ids if i not in heads]
        if missing:
            raise BlobNotFound(f"no blob {missing[0]}")
        if sum(heads[i].size for i in set(blob_ids)) > max_total:
            raise BlobTooLarge(f"blobs add up to more than {max_total} bytes")
        pieces: dict[int, list[bytes]] = {i: [] for i in heads}
        for blob_id, seq, data in conn.execute(_CHUNKS, {"ids": blob_ids}):
            if seq != len(pieces[blob_id]):
                raise BlobCorrupt(f"blob {blob_id}: chunk {len(pieces[blob_id])} is missing")
            pieces[blob_id].append(bytes(data))
    out = []
    for blob_id in blob_ids:
        head, data = heads[blob_id], b"".join(pieces[blob_id])
        if (
            len(pieces[blob_id]) != head.chunk_count
            or len(data) != head.size
            or hashlib.sha256(data).hexdigest() != head.sha256
        ):
            raise BlobCorrupt(f"blob {blob_id}: stored chunks do not match its size or SHA-256")
        out.append(data)
    return out


_HEADS = select(col(Blob.id), col(Blob.sha256), col(Blob.size), col(Blob.chunk_count)).where(
    col(Blob.id).in_(bindparam("ids", expanding=True))
)
_CHUNKS = (
    select(col(BlobChunk.blob_id), col(BlobChunk.seq), col(BlobChunk.data))
    .where(col(BlobChunk.blob_id).in_(bindparam("ids", expanding=True)))
    .order_by(col(BlobChunk.blob_id), col(BlobChunk.seq))
)


def _info(conn: Connection, blob_id: int) -> BlobInfo:
    row = conn.execute(
        select(col(Blob.id), col(Blob.sha256), col(Blob.size)).where(col(Blob.id) == blob_id)
    ).one_or_none()
    if row is None:
        raise BlobNotFound(f"no blob {blob_id}")
    return BlobInfo(id=row.id, sha256=row.sha256, size=row.size)


def _read_with_engine(engine: Engine, blob_id: int, verify: bool) -> Iterator[bytes]:
    with read_only(engine).connect() as conn, conn.begin():
        yield from _read(conn, blob_id, verify)


_HEAD = select(col(Blob.sha256), col(Blob.size), col(Blob.chunk_count)).where(
    col(Blob.id) == bindparam("blob_id")
)
_CHUNK = select(col(BlobChunk.data)).where(
    col(BlobChunk.blob_id) == bindparam("blob_id"), col(BlobChunk.seq) == bindparam("seq")
)


def _read(conn: Connection, blob_id: int, verify: bool) -> Iterator[bytes]:
    head = conn.execute(_HEAD, {"blob_id": blob_id}).one_or_none()
    if head is None:
        raise BlobNotFound(f"no blob {blob_id}")
    digest = hashlib.sha256()
    seen = 0
    for seq in range(head.chunk_count):
        data = conn.execute(_CHUNK, {"blob_id": blob_id, "seq": seq}).scalar_one_or_none()
        if data is None:
            raise BlobCorrupt(f"blob {blob_id}: chunk {seq} of {head.chunk_count} is missing")
        data = bytes(data)
        seen += len(data)
        if verify:
            digest.update(data)
            last = seq == head.chunk_count - 1
            if seen > head.size or (last and (seen != head.size or digest.hexdigest() != head.sha256)):
                raise BlobCorrupt(f"blob {blob_id}: stored chunks do not match its size or SHA-256")
        yield data
    if verify and head.chunk_count == 0 and (head.size != 0 or digest.hexdigest() != head.sha256):
        raise BlobCorrupt(f"blob {blob_id}: no chunks stored for {head.size} bytes")

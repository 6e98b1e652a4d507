"""Drafts (Art. 4): a clerk prepares, only a signatory's signature sends.

A draft's fields and attachment list are encrypted under the node's storage
key (AES-256-GCM, the draft id as associated data); its attachments are stored
as STREAM ciphertext under a key derived from the storage key and the draft id,
so neither the database nor a backup of it shows what a draft says.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol import AttachmentRef, decrypt_stream, encrypt_stream
from protocol._stream import attachment_key, ciphertext_size
from service.blobs import read_blob, write_blob
from service.case_models import Draft
from service.db import session_scope
from service.errors import ServiceError
from service.node import SPOOL_MEMORY, Node, file_chunks, record_event


def _aad(draft_id: str) -> bytes:
    return b"prolink-draft-v1\x00" + draft_id.encode()


def _seal(key: bytes, draft_id: str, value: dict[str, Any]) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, json.dumps(value, ensure_ascii=False).encode(), _aad(draft_id))


def _unseal(key: bytes, draft_id: str, sealed: bytes) -> dict[str, Any]:
    try:
        value = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], _aad(draft_id)))
    except (InvalidTag, ValueError):
        raise ServiceError(
            "the draft does not decrypt with this node's storage key", code="draft.undecryptable", status=500
        ) from None
    return value  # type: ignore[no-any-return]


def create(
    node: Node, user_id: int, fields: dict[str, Any], uploads: list[tuple[AttachmentRef, IO[bytes]]]
) -> Draft:
    """Store a draft. Its fields are validated now, so the clerk hears of problems (Art. 8...) at once."""
    from service.user_api import compose_for

    compose_for(node, fields, [ref for ref, _ in uploads])
    key = node.storage_key()
    now = node.clock()
    draft_id = str(uuid.uuid4())
    with session_scope(node.engine) as s:
        blobs = []
        for index, (ref, src) in enumerate(uploads):
            stream = encrypt_stream(attachment_key(key, draft_id, index), file_chunks(src), ref.size)
            blobs.append(write_blob(s, stream).id)
        draft = Draft(
            id=draft_id,
            kind=str(fields.get("kind")),
            created_by=user_id,
            status="draft",
            sealed=_seal(
                key,
                draft_id,
                {"fields": fields, "attachments": [r.model_dump(mode="json") for r, _ in uploads]},
            ),
            attachment_blobs=blobs,
            created_at=now,
            updated_at=now,
        )
        s.add(draft)
        record_event(
            s, now, "draft.created", "ok", actor=f"user:{user_id}", object_id=draft_id, kind=draft.kind
        )
    return draft


def get(node: Node, draft_id: str) -> tuple[Draft, dict[str, Any]]:
    with session_scope(node.engine, readonly=True) as s:
        draft = s.get(Draft, draft_id)
    if draft is None:
        raise ServiceError(f"no draft {draft_id}", code="draft.not_found", status=404)
    return draft, _unseal(node.storage_key(), draft_id, draft.sealed)


@contextmanager
def attachments(node: Node, draft: Draft, refs: list[AttachmentRef]) -> Iterator[list[IO[bytes]]]:
    """The draft's attachments decrypted into temporary files (deleted afterwards)."""
    key = node.storage_key()
    files: list[IO[bytes]] = []
    try:
        for index, (ref, blob_id) in enumerate(zip(refs, draft.attachment_blobs, strict=True)):
            tmp = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - closed below
            files.append(tmp)
            for chunk in decrypt_stream(
                attachment_key(key, draft.id, index),
                read_blob(node.engine, blob_id),
                ciphertext_size(ref.size),
            ):
                tmp.write(chunk)
            tmp.seek(0)
        yield files
    finally:
        for f in files:
            f.close()


def sign_and_send(node: Node, draft_id: str, user_id: int, signatory_key_id: str) -> tuple[Draft, Any]:
    """A signatory signs the draft as it stands today and sends it."""
    from service.user_api import compose_for

    draft, content = get(node, draft_id)
    if draft.status != "draft":
        raise ServiceError(f"draft {draft_id} is {draft.status}", code="draft.not_open", status=409)
    refs = [AttachmentRef.model_validate(a) for a in content["attachments"]]
    document = compose_for(node, content["fields"], refs)
    with attachments(node, draft, refs) as files:
        message = node.send(document, node.signatory(signatory_key_id), files, actor=f"user:{user_id}")
    now = node.clock()
    with session_scope(node.engine) as s:
        row = s.get(Draft, draft_id, with_for_update=True)
        assert row is not None
        row.status, row.message_id, row.updated_at = "sent", message.id, now
        s.add(row)
        record_event(
            s, now, "draft.signed", "ok", actor=f"user:{user_id}", object_id=draft_id, message_id=message.id
        )
    return row, message


def discard(node: Node, draft_id: str, user_id: int, now: datetime) -> Draft:
    with session_scope(node.engine) as s:
        row = s.get(Draft, draft_id, with_for_update=True)
        if row is None:
            raise ServiceError(f"no draft {draft_id}", code="draft.not_found", status=404)
        if row.status != "draft":
            raise ServiceError(f"draft {draft_id} is {row.status}", code="draft.not_open", status=409)
        row.status, row.updated_at = "discarded", now
        s.add(row)
        record_event(s, now, "draft.discarded", "ok", actor=f"user:{user_id}", object_id=draft_id)
    return row

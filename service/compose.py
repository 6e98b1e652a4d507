"""Turning what a user typed into a protocol document the node can sign.

The user gives the kind and its fields; the node fills in what only it may
set (id, its own Party, the time, the language, attachment digests) and the
thread a reply belongs to. Validation is the protocol's (``parse_document``),
so a document the node composes is exactly one the peer will accept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import IO, Any

from protocol import DOCUMENT_TYPES, AttachmentRef, Document, parse_document
from service.errors import ServiceError
from service.models import Message
from service.policy import check_purpose_code

NODE_FIELDS = ("id", "sender_party", "created_at", "language", "attachments")


def attachment_ref(name: str, media_type: str, src: IO[bytes]) -> AttachmentRef:
    """Hash and measure an uploaded file (one pass, bounded memory)."""
    digest = hashlib.sha256()
    size = 0
    src.seek(0)
    while chunk := src.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    src.seek(0)
    return AttachmentRef(
        name=name, media_type=media_type or "application/octet-stream", size=size, sha256=digest.hexdigest()
    )


def compose(
    fields: Mapping[str, Any],
    *,
    message_id: str,
    sender_party: str,
    now: datetime,
    attachments: list[AttachmentRef],
    answered: Message | None,
) -> Document:
    """Build and validate a document from user ``fields``.

    ``answered`` is the message named by ``in_reply_to`` (looked up by the
    caller); the reply joins its thread and goes to its Party.
    """
    clash = [f for f in NODE_FIELDS if f in fields]
    if clash:
        raise ServiceError(
            f"{clash[0]} is set by the node, not by the user",
            code="request.node_field",
            status=422,
            field=clash[0],
        )
    doc: dict[str, Any] = dict(fields)
    kind = doc.get("kind")
    doc.update(
        id=message_id,
        sender_party=sender_party,
        created_at=now.isoformat(),
        language="ru",
        attachments=[a.model_dump(mode="json") for a in attachments],
    )
    if answered is not None:
        doc.setdefault("thread_id", answered.thread_id)
        doc.setdefault("recipient_party", answered.peer)
        if doc["thread_id"] != answered.thread_id or doc["recipient_party"] != answered.peer:
            raise ServiceError(
                "a reply belongs to the thread and Party of the message it answers",
                code="request.wrong_thread",
                status=422,
                field="thread_id",
            )
    elif (
        isinstance(kind, str)
        and kind in DOCUMENT_TYPES
        and DOCUMENT_TYPES[kind].thread_rule in ("opens", "opens_or_replies")
    ):
        doc.setdefault("thread_id", message_id)
    if kind in ("request", "spontaneous_information"):
        check_purpose_code(doc.get("purpose_code"))  # what the items answering it are bound to (Art. 7)
    if kind == "request":
        doc.setdefault("requesting_party", sender_party)
        doc.setdefault("requested_party", doc.get("recipient_party"))
    return parse_document(doc)

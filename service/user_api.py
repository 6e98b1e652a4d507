"""The user API: what clerks, signatories and readers of one Party use (bearer tokens).

Served on the internal port, never on the peer port. Routes stay short: they
declare the role they need and call into ``Node``. Art. 4-7 workflows (drafts,
lifecycle, purpose-bound reads) grow here; the shapes are chosen so they fit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.datastructures import UploadFile

from protocol import AttachmentRef, Document, document_to_json, read_json
from service import reading
from service.auth import Principal, require_role
from service.case_api import cases_router
from service.case_models import Thread
from service.compose import attachment_ref, compose
from service.db import loop_reader, session_scope
from service.errors import ServiceError, install_error_handlers
from service.metrics import NO_TELEMETRY
from service.models import Message
from service.node import Node, new_message_id
from service.openapi_examples import document_body
from service.reading import can_see

Sender = Annotated[Principal, Depends(require_role("signatory"))]
Viewer = Annotated[Principal, Depends(require_role("clerk", "signatory", "reader", "operator"))]
Reader = Annotated[Principal, Depends(require_role("reader", "clerk", "signatory"))]


def message_view(row: Message, user: Principal | None = None) -> dict[str, Any]:
    """Metadata only, never content; below the item's level only that it exists, from whom and when
    (Art. 7)."""
    policy = row.summary.get("policy", {})
    if user is not None and not can_see(user, policy.get("confidentiality")):
        return {
            "id": row.id,
            "direction": row.direction,
            "peer": row.peer,
            "created_at": row.created_at.isoformat(),
            "restricted": True,
        }
    return {
        "id": row.id,
        "confidentiality": policy.get("confidentiality"),
        "bound_purpose": {
            "purpose_code": policy.get("purpose_code"),
            "case_number": policy.get("case_number"),
        }
        if row.direction == "in"
        else None,
        "direction": row.direction,
        "peer": row.peer,
        "kind": row.kind,
        "thread_id": row.thread_id,
        "in_reply_to": row.in_reply_to,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "envelope_sha256": row.envelope_sha256,
        "envelope_size": row.envelope_size,
        "receipt_status": row.receipt_status,
        "receipt_verified": row.receipt_verified,
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
    }


def create_user_app(node: Node) -> FastAPI:
    app = FastAPI(title="prolink user API", telemetry=NO_TELEMETRY)
    app.state.node = node
    install_error_handlers(app)
    # The message routes are declared first: they carry the traffic, and the router tries routes in
    # order (no other router has a path under /v1/messages).

    @app.post(
        "/v1/messages",
        status_code=201,
        openapi_extra=document_body(
            "Поля документа (JSON) или multipart: часть document (JSON) и вложения attachments."
        ),
    )
    async def send_message(request: Request, user: Sender) -> dict[str, Any]:
        """Compose, sign (as the calling signatory), seal and queue a message.

        JSON body: the document's fields. Or multipart: a ``document`` part with
        that JSON and any number of ``attachments`` file parts (streamed to disk,
        so their size does not bound memory).
        """
        fields, uploads = await read_document_upload(request)
        if user.signatory_key_id is None:
            raise ServiceError(
                "this signatory has no signing key on this node", code="auth.no_signing_key", status=403
            )
        if not uploads:  # nothing to stream: no thread hop for this request (``Node.send_async``)
            signatory = node.loaded_signatory(user.signatory_key_id) or await asyncio.to_thread(
                node.signatory, user.signatory_key_id
            )
            row = await node.send_async(await _compose(node, fields), signatory, actor=f"user:{user.id}")
        else:
            try:
                row = await asyncio.to_thread(_send, node, user, fields, uploads)
            finally:
                for f in uploads:
                    await f.close()
        return message_view(row)  # (the node hands it to the worker, or wakes it: ``Node._store_group``)

    @app.get("/v1/messages")
    def list_messages(
        user: Viewer,
        direction: str | None = Query(None, pattern="^(in|out)$"),
        status: str | None = None,
        kind: str | None = None,
        thread_id: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        query = select(Message).order_by(Message.created_at.desc(), Message.id)  # type: ignore[attr-defined]
        for column, value in (
            (Message.direction, direction),
            (Message.status, status),
            (Message.kind, kind),
            (Message.thread_id, thread_id),
        ):
            if value is not None:
                query = query.where(column == value)
        with session_scope(node.engine, readonly=True) as s:
            rows = s.execute(query.limit(limit).offset(offset)).scalars().all()
        return {"messages": [message_view(r, user) for r in rows]}

    @app.get("/v1/messages/{direction}/{message_id}")
    def get_message(user: Viewer, direction: str, message_id: str) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            row = s.get(Message, (message_id, direction))
        if row is None:
            raise ServiceError(f"no {direction} message {message_id}", code="message.not_found", status=404)
        view = message_view(row, user)
        if view.get("restricted"):
            return view
        if row.receipt is not None:
            view["receipt"] = json.loads(row.receipt)
        return view

    @app.get("/v1/messages/in/{message_id}/content")
    def read_message(
        user: Reader, message_id: str, purpose_code: str | None = None, case_number: str | None = None
    ) -> dict[str, Any]:
        """The decrypted, verified document, for a stated purpose and case (Art. 7; audited).

        Re-verified from the envelope as received on every read: nothing is kept decrypted.
        """
        decision = reading.authorise(node, message_id, user, "consult", purpose_code, case_number)
        with node.open_received(message_id) as (message, _):
            return {
                "id": message.message_id,
                "sender": message.header.sender,
                "sent_at": message.header.sent_at.isoformat(),
                "signed_by": {
                    "person": message.authorisation.person,
                    "position": message.authorisation.position,
                    "key_id": message.authorisation.key.key_id,
                },
                "document": document_to_json(message.document),
                "consent_relied_on": decision.consent_id,
            }

    @app.get("/v1/messages/in/{message_id}/attachments/{index}")
    def download_attachment(
        user: Reader,
        message_id: str,
        index: int,
        purpose_code: str | None = None,
        case_number: str | None = None,
    ) -> StreamingResponse:
        """An attachment, streamed and checked against its signed hash; a download is a use (Art. 7)."""
        reading.authorise(node, message_id, user, "disclose", purpose_code, case_number)
        with node.open_received(message_id) as (message, _):
            if not 0 <= index < len(message.attachments):
                raise ServiceError(
                    f"message has no attachment {index}", code="attachment.not_found", status=404
                )
            ref = message.attachments[index]

        def body() -> Iterator[bytes]:
            with node.open_received(message_id) as (msg, src):
                yield from msg.attachment_chunks(index, src)

        return StreamingResponse(
            body(),
            media_type=ref.media_type,
            headers={
                "content-length": str(ref.size),
                "x-prolink-sha256": ref.sha256,
                "content-disposition": f"attachment; filename*=UTF-8''{_quote(ref.name)}",
            },
        )

    @app.get("/v1/messages/in/{message_id}/export")
    def export_item(
        user: Reader,
        message_id: str,
        purpose_code: str | None = None,
        case_number: str | None = None,
        operation: str = Query("disclose", pattern="^(disclose|transfer)$"),
    ) -> dict[str, Any]:
        """An evidence package: the document as signed, the signer's authorisation and attachment hashes,
        verifiable offline against the provider's bundle. Export is a use like a read (Art. 7; audited)."""
        decision = reading.authorise(node, message_id, user, operation, purpose_code, case_number)
        with node.open_received(message_id) as (message, _):
            return {
                "message_id": message.message_id,
                "provider": message.header.sender,
                "envelope_sha256": message.envelope_sha256.hex(),
                "signed_document": json.loads(message.signed_document),
                "authorisation": json.loads(message.authorisation_bytes),
                "attachments": [a.model_dump(mode="json") for a in message.attachments],
                "operation": operation,
                "purpose_code": purpose_code,
                "case_number": case_number,
                "consent_relied_on": decision.consent_id,
            }

    app.include_router(cases_router(node))
    from service.admin_api import admin_router, ops_router  # operator endpoints, /healthz, /readyz, /metrics

    app.include_router(ops_router(node))
    app.include_router(admin_router(node))
    from service.audit_api import install_admin_routes  # audit export, alerts, heads

    install_admin_routes(app, node)
    return app


def _send(node: Node, user: Principal, fields: dict[str, Any], uploads: list[UploadFile]) -> Message:
    signatory = node.signatory(user.signatory_key_id or "")
    document = compose_for(node, fields, upload_refs(uploads))
    return node.send(document, signatory, [u.file for u in uploads], actor=f"user:{user.id}")


async def read_document_upload(request: Request) -> tuple[dict[str, Any], list[UploadFile]]:
    """A document's fields from a JSON body, or from a multipart form with attachments (spooled to disk)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1000)
        raw = form.get("document")
        if not isinstance(raw, str):
            raise ServiceError(
                "the multipart form needs a 'document' field with JSON",
                code="request.invalid",
                status=422,
                field="document",
            )
        return _json_object(raw.encode()), [
            f for f in form.getlist("attachments") if isinstance(f, UploadFile)
        ]
    return _json_object(await request.body()), []


def upload_refs(uploads: list[UploadFile]) -> list[AttachmentRef]:
    return [
        attachment_ref(u.filename or f"attachment-{i}", u.content_type or "", u.file)
        for i, u in enumerate(uploads)
    ]


def _references(fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """The message a document answers and the thread it names, if given (looked up by ``compose_for``)."""
    reply_to, thread_ref = fields.get("in_reply_to"), fields.get("thread_id") or fields.get("request_id")
    return (
        reply_to if isinstance(reply_to, str) else None,
        thread_ref if isinstance(thread_ref, str) else None,
    )


async def _compose(node: Node, fields: dict[str, Any]) -> Document:
    """``compose_for`` without attachments, on the event loop unless it must wait for a database server.

    A new request looks nothing up; a reply reads the message it answers and its
    thread: from SQLite on the loop (a local read, as the token check), from
    PostgreSQL in a thread.
    """
    if _references(fields) == (None, None):
        return compose_for(node, fields, [])
    if node.engine.dialect.name == "sqlite":
        return compose_for(node, fields, [], reader=loop_reader(node.engine))
    return await asyncio.to_thread(compose_for, node, fields, [])


def compose_for(
    node: Node, fields: dict[str, Any], refs: list[AttachmentRef], *, reader: Engine | None = None
) -> Document:
    """Compose a document, finding the message it answers and the thread it belongs to (read through
    ``reader`` if given, else the node's engine)."""
    answered = None
    reply_to, thread_ref = _references(fields)
    thread = None
    if reply_to is not None or thread_ref is not None:  # else nothing to look up: no transaction
        with session_scope(reader or node.engine, readonly=True) as s:
            if reply_to is not None:
                answered = s.get(Message, (reply_to, "in")) or s.get(Message, (reply_to, "out"))
                if answered is None:
                    raise ServiceError(
                        f"in_reply_to names no known message {reply_to}",
                        code="message.not_found",
                        status=422,
                        field="in_reply_to",
                    )
            thread = s.get(Thread, thread_ref) if thread_ref is not None else None
    if answered is None and thread is not None:
        fields = {"thread_id": thread.id, "recipient_party": thread.peer, **fields}
    return compose(
        fields,
        message_id=new_message_id(),
        sender_party=node.party,
        now=node.clock(),
        attachments=refs,
        answered=answered,
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = read_json(raw)
    except ValueError:
        raise ServiceError("the body is not valid JSON", code="request.malformed_json", status=400) from None
    if not isinstance(value, dict):
        raise ServiceError("the body must be a JSON object", code="request.invalid", status=422)
    return value


def _quote(name: str) -> str:
    return quote(name, safe="")

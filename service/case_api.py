"""User API for the agreement's workflows: requests and deadlines (Art. 4-6), timelines, drafts (Art. 4),
originals by post (Art. 4), contact directories (Art. 11), the agreement's state (Art. 14).

Every list shows metadata only (ids, states, dates, closed-list codes), never a document's text.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from protocol import OPEN_REQUEST_STATES, agreement_state_on
from service import drafts
from service.auth import Principal, require_role
from service.case_models import Consent, DirectoryVersion, Draft, Original, TerminationNotice, Thread
from service.cases import agreement_ends_on, termination_received_on
from service.db import session_scope
from service.errors import ServiceError
from service.models import Message
from service.node import Node, record_event
from service.openapi_examples import document_body
from service.policy import check_purpose_code
from service.reading import can_see

Staff = Annotated[Principal, Depends(require_role("clerk", "signatory", "reader", "operator"))]
Drafter = Annotated[Principal, Depends(require_role("clerk", "signatory", "operator"))]
Asker = Annotated[Principal, Depends(require_role("reader", "clerk", "signatory"))]
Signer = Annotated[Principal, Depends(require_role("signatory"))]
Operator = Annotated[Principal, Depends(require_role("operator"))]

#: Art. 11: contact persons are named "within one month of signing".
AGREEMENT_SIGNED_ON = date(2014, 7, 21)


def thread_view(t: Thread, today: date, me: str, user: Principal) -> dict[str, Any]:
    """A thread's metadata; below its confidentiality level only that it exists, with whom, since when."""
    if not can_see(user, t.confidentiality):
        return {"id": t.id, "peer": t.peer, "opened_at": t.opened_at.isoformat(), "restricted": True}
    open_ = t.kind == "request" and t.state in OPEN_REQUEST_STATES
    days_left = (t.due_on - today).days if t.due_on is not None else None
    return {
        "id": t.id,
        "kind": t.kind,
        "peer": t.peer,
        "state": t.state,
        "our_role": "requesting" if t.requesting_party == me else "requested",
        "requesting_party": t.requesting_party,
        "urgent": t.urgent,
        "direction": t.direction,
        "form": t.form,
        "confidentiality": t.confidentiality,
        "due_on": t.due_on.isoformat() if t.due_on else None,
        "days_left": days_left if open_ else None,
        "overdue": bool(open_ and days_left is not None and days_left < 0),
        "opened_at": t.opened_at.isoformat(),
        "updated_at": t.updated_at.isoformat(),
        "purpose_code": t.purpose_code,
    }


def original_view(o: Original, today: date) -> dict[str, Any]:
    return {
        "request_id": o.thread_id,
        "owed_by": o.owed_by,
        "owed_to": o.owed_to,
        "due_on": o.due_on.isoformat(),
        "dispatched_on": o.dispatched_on.isoformat() if o.dispatched_on else None,
        "tracking_number": o.tracking_number,
        "received_on": o.received_on.isoformat() if o.received_on else None,
        "matches_electronic": o.matches_electronic,
        "overdue": o.received_on is None and o.due_on < today,
    }


class ConsentAsk(BaseModel):
    """Art. 7: what a reader asks the provider to allow."""

    item_id: str
    purpose_code: str
    case_number: str | None = None
    requested_purpose: str
    justification: str


def consent_view(c: Consent) -> dict[str, Any]:
    return {
        "id": c.id,
        "thread_id": c.thread_id,
        "item_id": c.item_id,
        "user_party": c.user_party,
        "provider_party": c.provider_party,
        "purpose_code": c.purpose_code,
        "case_number": c.case_number,
        "status": c.status,
        "valid_until": c.valid_until.isoformat() if c.valid_until else None,
        "granted_case_number": c.granted_case_number,
        "requested_at": c.requested_at.isoformat(),
        "decided_at": c.decided_at.isoformat() if c.decided_at else None,
        "answer_message_id": c.answer_message_id,
    }


class TerminationIn(BaseModel):
    received_on: date
    given_by: str


def cases_router(node: Node) -> APIRouter:
    router = APIRouter()

    def today() -> date:
        return node.clock().date()

    # --- requests and deadlines (Art. 4, 5) -------------------------------------------

    @router.get("/v1/requests", tags=["requests"])
    def list_requests(
        user: Staff,
        state: str | None = None,
        overdue: bool | None = None,
        direction: str | None = None,
        party: str | None = None,
        kind: str = "request",
        opened_from: date | None = Query(None, alias="from"),
        opened_to: date | None = Query(None, alias="to"),
        limit: int = Query(200, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """Requests (or other threads) with due date, days left and overdue flag, filtered."""
        query = select(Thread).where(Thread.kind == kind).order_by(Thread.opened_at.desc())  # type: ignore[attr-defined]
        for column, value in ((Thread.state, state), (Thread.direction, direction), (Thread.peer, party)):
            if value is not None:
                query = query.where(column == value)
        if opened_from is not None:
            query = query.where(
                Thread.opened_at
                >= datetime.combine(opened_from, datetime.min.time(), tzinfo=node.clock().tzinfo)
            )
        if opened_to is not None:
            query = query.where(
                Thread.opened_at
                < datetime.combine(
                    opened_to + timedelta(days=1), datetime.min.time(), tzinfo=node.clock().tzinfo
                )
            )
        with session_scope(node.engine, readonly=True) as s:
            rows = s.execute(query).scalars().all()
        views = [thread_view(t, today(), node.party, user) for t in rows]
        if overdue is not None:
            views = [v for v in views if v.get("overdue") == overdue]
        return {"requests": views[offset : offset + limit]}

    @router.get("/v1/requests/{thread_id}", tags=["requests"])
    def get_request(user: Staff, thread_id: str) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            t = s.get(Thread, thread_id)
            original = s.get(Original, thread_id)
        if t is None:
            raise ServiceError(f"no thread {thread_id}", code="request.not_found", status=404)
        view = thread_view(t, today(), node.party, user)
        if view.get("restricted"):
            return view
        view["bound_purpose"] = {"purpose_code": t.purpose_code, "case_number": t.case_number}
        view["original"] = original_view(original, today()) if original else None
        return view

    @router.get("/v1/requests/{thread_id}/timeline", tags=["requests"])
    def timeline(user: Staff, thread_id: str) -> dict[str, Any]:
        """Every step of the thread: time, side, kind, signer (as verified), delivery status."""
        with session_scope(node.engine, readonly=True) as s:
            if s.get(Thread, thread_id) is None:
                raise ServiceError(f"no thread {thread_id}", code="request.not_found", status=404)
            rows = (
                s.execute(select(Message).where(Message.thread_id == thread_id).order_by(Message.created_at))
                .scalars()
                .all()
            )
        steps = [
            {
                "message_id": m.id,
                "at": m.created_at.isoformat(),
                "kind": m.kind,
                "side": node.party if m.direction == "out" else m.peer,
                "direction": m.direction,
                "signer": m.summary.get("signer"),
                "signer_key": m.summary.get("signed_by_key"),
                "status": m.status,
                "receipt_status": m.receipt_status,
            }
            for m in rows
        ]
        return {"thread_id": thread_id, "steps": steps}

    # --- drafts (Art. 4: nothing leaves unsigned) ---------------------------------------

    @router.post(
        "/v1/drafts",
        status_code=201,
        tags=["drafts"],
        openapi_extra=document_body(
            "Проект документа: отправляется только после подписания уполномоченным лицом (ст. 4)."
        ),
    )
    async def create_draft(request: Request, user: Drafter) -> dict[str, Any]:
        from service.user_api import read_document_upload, upload_refs

        fields, uploads = await read_document_upload(request)
        try:
            refs = upload_refs(uploads)
            draft = await asyncio.to_thread(
                drafts.create,
                node,
                user.id,
                fields,
                [(r, u.file) for r, u in zip(refs, uploads, strict=True)],
            )
        finally:
            for u in uploads:
                await u.close()
        return {"id": draft.id, "kind": draft.kind, "status": draft.status}

    @router.get("/v1/drafts", tags=["drafts"])
    def list_drafts(user: Drafter, status: str = "draft") -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            rows = (
                s.execute(select(Draft).where(Draft.status == status).order_by(Draft.created_at))
                .scalars()
                .all()
            )
        return {
            "drafts": [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "status": d.status,
                    "created_by": d.created_by,
                    "created_at": d.created_at.isoformat(),
                    "message_id": d.message_id,
                }
                for d in rows
            ]
        }

    @router.get("/v1/drafts/{draft_id}", tags=["drafts"])
    def get_draft(user: Drafter, draft_id: str) -> dict[str, Any]:
        draft, content = drafts.get(node, draft_id)
        return {
            "id": draft.id,
            "kind": draft.kind,
            "status": draft.status,
            "message_id": draft.message_id,
            **content,
        }

    @router.post("/v1/drafts/{draft_id}/sign", tags=["drafts"])
    async def sign_draft(user: Signer, draft_id: str) -> dict[str, Any]:
        """The signatory signs the draft (Art. 4) and it is sent at once."""
        if user.signatory_key_id is None:
            raise ServiceError(
                "this signatory has no signing key on this node", code="auth.no_signing_key", status=403
            )
        draft, message = await asyncio.to_thread(
            drafts.sign_and_send, node, draft_id, user.id, user.signatory_key_id
        )
        return {"id": draft.id, "status": draft.status, "message_id": message.id}

    @router.delete("/v1/drafts/{draft_id}", tags=["drafts"])
    def discard_draft(user: Drafter, draft_id: str) -> dict[str, Any]:
        draft = drafts.discard(node, draft_id, user.id, node.clock())
        return {"id": draft.id, "status": draft.status}

    # --- consent (Art. 7) -------------------------------------------------------------------

    @router.post("/v1/consents", status_code=201, tags=["consent"])
    def ask_consent(user: Asker, ask: ConsentAsk) -> dict[str, Any]:
        """A reader asks for another use of a received item: this makes a consent-request draft that a
        signatory signs (``POST /v1/drafts/{id}/sign``) before it goes to the provider."""
        check_purpose_code(ask.purpose_code)
        with session_scope(node.engine, readonly=True) as s:
            item = s.get(Message, (ask.item_id, "in"))
        if item is None or item.thread_id is None:
            raise ServiceError(f"no received item {ask.item_id}", code="message.not_found", status=404)
        fields = {
            "kind": "consent_request",
            "thread_id": item.thread_id,
            "recipient_party": item.peer,
            "confidentiality": item.summary.get("policy", {}).get("confidentiality", "confidential"),
            **ask.model_dump(exclude_none=True),
        }
        draft = drafts.create(node, user.id, fields, [])
        return {"draft_id": draft.id, "status": draft.status}

    @router.get("/v1/consents", tags=["consent"])
    def list_consents(user: Staff, thread_id: str | None = None, status: str | None = None) -> dict[str, Any]:
        query = select(Consent).order_by(Consent.requested_at)
        if thread_id is not None:
            query = query.where(Consent.thread_id == thread_id)
        if status is not None:
            query = query.where(Consent.status == status)
        with session_scope(node.engine, readonly=True) as s:
            rows = s.execute(query).scalars().all()
        return {"consents": [consent_view(c) for c in rows]}

    # --- originals by post (Art. 4) -------------------------------------------------------

    @router.get("/v1/originals", tags=["originals"])
    def list_originals(user: Staff, overdue: bool | None = None) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            rows = s.execute(select(Original).order_by(Original.due_on)).scalars().all()
        views = [original_view(o, today()) for o in rows]
        if overdue is not None:
            views = [v for v in views if v["overdue"] == overdue]
        return {"originals": views}

    # --- contact directories (Art. 11) -----------------------------------------------------

    @router.get("/v1/directory/{party}", tags=["directory"])
    def directory(user: Staff, party: str) -> dict[str, Any]:
        """A Party's current directory and its history; and whether the first one came in time."""
        with session_scope(node.engine, readonly=True) as s:
            rows = (
                s.execute(
                    select(DirectoryVersion)
                    .where(DirectoryVersion.party == party)
                    .order_by(DirectoryVersion.version)
                )
                .scalars()
                .all()
            )
        history = [
            {
                "version": d.version,
                "message_id": d.message_id,
                "recorded_at": d.recorded_at.isoformat(),
                "directory": d.directory,
            }
            for d in rows
        ]
        due = AGREEMENT_SIGNED_ON + timedelta(days=31)
        first = rows[0].recorded_at.date() if rows else None
        return {
            "party": party,
            "current": history[-1] if history else None,
            "history": history,
            "first_directory_due_on": due.isoformat(),
            "first_directory_on_time": None if first is None else first <= due,
            "first_directory_overdue": first is None and today() > due,
        }

    # --- the agreement (Art. 14) ------------------------------------------------------------

    @router.get("/v1/agreement", tags=["agreement"])
    def agreement(user: Staff) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            received = termination_received_on(s)
            ends = agreement_ends_on(s)
        return {
            "signed_on": AGREEMENT_SIGNED_ON.isoformat(),
            "state": agreement_state_on(today(), received),
            "termination_notice_received_on": received.isoformat() if received else None,
            "ends_on": ends.isoformat() if ends else None,
        }

    @router.post("/v1/admin/agreement/termination", status_code=201, tags=["agreement"])
    def record_termination(user: Operator, notice: TerminationIn) -> dict[str, Any]:
        """An operator records a written notice of termination received through diplomatic channels."""
        now = node.clock()
        with session_scope(node.engine) as s:
            s.add(
                TerminationNotice(
                    received_on=notice.received_on,
                    given_by=notice.given_by,
                    source="operator",
                    recorded_at=now,
                )
            )
            record_event(
                s,
                now,
                "agreement.termination_recorded",
                "ok",
                actor=f"user:{user.id}",
                party=notice.given_by,
                received_on=notice.received_on.isoformat(),
            )
            ends = agreement_ends_on(s)
        return {
            "received_on": notice.received_on.isoformat(),
            "ends_on": ends.isoformat() if ends else None,
            "state": agreement_state_on(today(), notice.received_on),
        }

    return router

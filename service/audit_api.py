"""HTTP routes of the audit log: head exchange on the peer API, export and alerts on the admin API.

Peer API (mutual TLS; the client certificate names the Party):
  ``POST /v1/log/heads``          push our checkpoint, get the peer's cosignature (``audit_witness``)
  ``GET  /v1/log/heads/{party}``  the newest head of ``party``'s log this node accepted, with its cosignature

Admin API (bearer token, role auditor or operator):
  ``GET /v1/admin/audit/export?from=&to=&format=jsonl|csv``  streamed export (``audit_export``)
  ``GET /v1/admin/audit/alerts``   audit alarms, newest first
  ``GET /v1/admin/audit/heads``    our newest head, with the cosignatures peers returned
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select

from protocol import ProlinkError, read_json
from service import audit, audit_export
from service.audit_witness import accept_head, accepted_view, latest_accepted
from service.auth import Principal, require_role
from service.db import session_scope
from service.errors import ServiceError, error_body
from service.models import AuditAlert, AuditCosignature
from service.node import Node

MAX_HEAD_BODY = 256 * 1024

Auditor = Annotated[Principal, Depends(require_role("auditor", "operator"))]


def install_peer_routes(app: FastAPI, node: Node) -> None:
    from service.peer_api import party_of_certificate

    @app.post("/v1/log/heads")
    async def push_head(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_HEAD_BODY:
            return JSONResponse(
                error_body(ProlinkError("head too large", code="audit.bad_request")), status_code=413
            )
        try:
            body: Any = read_json(raw)
        except ValueError:
            return JSONResponse(
                error_body(ProlinkError("the body is not JSON", code="audit.bad_request")), status_code=400
            )
        claimed = body.get("party") if isinstance(body, dict) else None
        der = getattr(request.state, "tls_peer_cert", None)
        tls_party = party_of_certificate(node, der)
        if der is not None and tls_party is None:
            return JSONResponse(
                error_body(
                    ProlinkError("client certificate belongs to no known peer", code="audit.unknown_peer")
                ),
                status_code=403,
            )
        party = tls_party or claimed
        if not isinstance(party, str) or (claimed is not None and claimed != party):
            exc = ProlinkError(
                f"TLS client is {tls_party} but the head claims {claimed}", code="audit.unknown_peer"
            )
            return JSONResponse(error_body(exc), status_code=403)
        answer = await asyncio.to_thread(accept_head, node, party, body)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.get("/v1/log/heads/{party}")
    def accepted_head(party: str) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            row = latest_accepted(s, party)
            if row is None:
                raise ServiceError(
                    f"this node has accepted no head of {party}'s log", code="audit.no_head", status=404
                )
            return accepted_view(row)


def install_admin_routes(app: FastAPI, node: Node) -> None:

    @app.get("/v1/admin/audit/export")
    async def export(
        user: Auditor,
        fmt: Annotated[str, Query(alias="format", pattern="^(jsonl|csv)$")] = "jsonl",
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
    ) -> StreamingResponse:
        """The log (or the entries from ``from`` to ``to``), signed and cosigned heads, proofs; streamed."""
        for t, name in ((start, "from"), (end, "to")):
            if t is not None and t.tzinfo is None:
                raise ServiceError(
                    f"'{name}' needs a time zone (e.g. ...Z)", code="request.invalid", status=422, field=name
                )
        plan = await asyncio.to_thread(
            audit_export.prepare, node, actor=f"user:{user.id}", fmt=fmt, start=start, end=end
        )
        stamp = plan.exported_at.strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            audit_export.stream(node.engine, plan),
            media_type=audit_export.MEDIA_TYPES[fmt],
            headers={
                "content-disposition": f'attachment; filename="audit-{node.party}-{stamp}.{fmt}"',
                "x-prolink-head-size": str(plan.head.size),
            },
        )

    @app.get("/v1/admin/audit/entries/{seq}/proof")
    def entry_proof(user: Auditor, seq: int) -> Response:
        """Proof that one entry is in the log under a signed (cosigned when possible) head: for a court."""
        proof = audit_export.entry_proof(node, seq, actor=f"user:{user.id}")
        name = f"audit-{node.party}-{seq}.proof.json"
        return Response(
            proof,
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/v1/admin/audit/alerts")
    def alerts(user: Auditor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            rows = s.execute(select(AuditAlert).order_by(AuditAlert.id.desc()).limit(limit)).scalars().all()  # type: ignore[union-attr]
            return {
                "alerts": [
                    {
                        "id": r.id,
                        "at": r.at.isoformat(),
                        "party": r.party,
                        "code": r.code,
                        "message": r.message,
                        "evidence": r.evidence,
                    }
                    for r in rows
                ]
            }

    @app.get("/v1/admin/audit/heads")
    def heads(user: Auditor) -> dict[str, Any]:
        with session_scope(node.engine, readonly=True) as s:
            head = audit.latest_head(s)
            size = audit.size(s.connection())
            if head is None:
                return {"size": size, "head": None}
            cosigs = (
                s.execute(select(AuditCosignature).where(AuditCosignature.head_size == head.size))
                .scalars()
                .all()
            )
            return {
                "size": size,
                "head": {
                    "size": head.size,
                    "root": head.root.hex(),
                    "signed_at": head.signed_at.isoformat(),
                    "note": audit.cosigned_note(s, head).decode("utf-8"),
                    "cosigned_by": sorted(c.party for c in cosigs),
                },
            }

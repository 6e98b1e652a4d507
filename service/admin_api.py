"""The admin API (operator role), health and metrics on the internal port; the bundle push on the peer port.

``admin_router``: peers, keys and signatories, users, outbox, originals, the
agreement's configuration versions (the termination notice is recorded in
``case_api``). ``ops_router``: ``/healthz``, ``/readyz``, ``/metrics``.
``peer_bundle_router``: ``POST /v1/bundle`` on the *peer* port (mutual TLS),
where a peer hands us its new root-signed bundle after a rotation.

Routes only check roles and shapes; the work and the audit events are in
``service.admin``. Nothing here is served on the peer port except the bundle
push, and nothing on the internal port accepts a peer's certificate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from service import admin, metrics
from service.auth import Principal, require_role
from service.db import read_only, session_scope
from service.errors import ServiceError, error_body
from service.migrate import is_up_to_date
from service.node import Node

Operator = Annotated[Principal, Depends(require_role("operator"))]
Scraper = Annotated[Principal, Depends(require_role("operator", "auditor"))]


def _actor(user: Principal) -> str:
    return f"user:{user.id}"


def _wake(node: Node) -> None:
    """Have this process's delivery worker (``prolink serve``) claim what just became due."""
    if node.worker is not None:
        node.worker.wake()


# --- request bodies --------------------------------------------------------------------


class Reason(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class OptionalReason(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class BundleIn(BaseModel):
    bundle: str = Field(description="The bundle file's exact bytes, base64.")
    fingerprint: str = Field(min_length=1, description="The root key fingerprint the peer read to you.")


class RotateIn(BaseModel):
    overlap_seconds: int = Field(
        default=7 * 24 * 3600, ge=0, le=365 * 24 * 3600, description="How long the old keys stay valid."
    )
    passphrase: str | None = Field(
        default=None, description="The root key's passphrase, where it is encrypted."
    )


class RevokeIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)
    passphrase: str | None = None
    revoked_at: datetime | None = Field(
        default=None, description="Earlier than now if the compromise began before it was found."
    )


class SignatoryIn(BaseModel):
    person: str = Field(min_length=1, max_length=200)
    position: str = Field(min_length=1, max_length=200)
    valid_from: date
    valid_until: date
    passphrase: str | None = None
    user_id: int | None = None


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str
    clearance: str = "unrestricted"
    signatory_key_id: str | None = None


class UserPatch(BaseModel):
    role: str | None = None
    clearance: str | None = None
    signatory_key_id: str | None = None


class AgreementVersionIn(BaseModel):
    effective_from: date
    reference: str = Field(min_length=1, max_length=500, description="The amending protocol (Art. 12).")
    changes: dict[str, Any]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ServiceError(
            "revoked_at needs a time zone", code="request.invalid", status=422, field="revoked_at"
        )
    return value


# --- the admin router --------------------------------------------------------------------


def admin_router(node: Node) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    # peers
    @router.get("/peers")
    def peers(user: Operator) -> dict[str, Any]:
        return {"peers": admin.list_peers(node)}

    @router.get("/peers/{party}")
    def peer(user: Operator, party: str) -> dict[str, Any]:
        return admin.list_peers(node, party)[0]

    @router.post("/peers/{party}/bundle")
    def import_bundle(user: Operator, party: str, body: BundleIn) -> dict[str, Any]:
        """A new bundle version of a known peer (rotation), trusted only if the typed fingerprint matches."""
        try:
            data = base64.b64decode(body.bundle, validate=True)
        except (binascii.Error, ValueError):
            raise ServiceError(
                "bundle must be base64", code="request.invalid", status=422, field="bundle"
            ) from None
        return admin.import_peer_bundle(node, party, data, body.fingerprint, _actor(user))

    @router.post("/peers/{party}/refresh")
    def refresh_bundle(user: Operator, party: str) -> dict[str, Any]:
        """Fetch the peer's current bundle from its peer API now (kept only if newer, same root)."""
        trusted = admin.fetch_peer_bundle(node, party)
        return {"party": party, "bundle_version": trusted.bundle.version}

    @router.post("/peers/{party}/suspend")
    def suspend(user: Operator, party: str, body: OptionalReason | None = None) -> dict[str, Any]:
        return admin.set_peer_suspended(node, party, True, _actor(user), body.reason if body else None)

    @router.post("/peers/{party}/resume")
    def resume(user: Operator, party: str) -> dict[str, Any]:
        view = admin.set_peer_suspended(node, party, False, _actor(user))
        _wake(node)
        return view

    # keys and signatories
    @router.get("/keys")
    def keys(user: Operator) -> dict[str, Any]:
        return admin.keys_view(node)

    @router.post("/keys/rotate")
    def rotate(user: Operator, body: RotateIn) -> dict[str, Any]:
        return admin.rotate_keys(node, timedelta(seconds=body.overlap_seconds), body.passphrase, _actor(user))

    @router.post("/keys/{key_id}/revoke")
    def revoke(user: Operator, key_id: str, body: RevokeIn) -> dict[str, Any]:
        return admin.revoke(
            node, key_id, body.reason, body.passphrase, _actor(user), revoked_at=_aware(body.revoked_at)
        )

    @router.get("/signatories")
    def signatories(user: Operator) -> dict[str, Any]:
        return {"signatories": admin.signatories_view(node)}

    @router.post("/signatories", status_code=201)
    def authorise(user: Operator, body: SignatoryIn) -> dict[str, Any]:
        return admin.authorise_signatory(
            node,
            body.person,
            body.position,
            body.valid_from,
            body.valid_until,
            body.passphrase,
            _actor(user),
            body.user_id,
        )

    @router.post("/signatories/{key_id}/revoke")
    def revoke_signatory(user: Operator, key_id: str, body: RevokeIn) -> dict[str, Any]:
        if key_id not in {s["key_id"] for s in admin.signatories_view(node)}:
            raise ServiceError(f"no signatory {key_id}", code="keys.unknown_signatory", status=404)
        return admin.revoke(
            node, key_id, body.reason, body.passphrase, _actor(user), revoked_at=_aware(body.revoked_at)
        )

    # users
    @router.get("/users")
    def users(user: Operator, role: str | None = None, disabled: bool | None = None) -> dict[str, Any]:
        return {"users": admin.list_users(node, role, disabled)}

    @router.post("/users", status_code=201)
    def add_user(user: Operator, body: UserIn) -> dict[str, Any]:
        view, token = admin.add_user(
            node, body.name, body.role, body.clearance, _actor(user), body.signatory_key_id
        )
        return {**view, "token": token}

    @router.patch("/users/{user_id}")
    def change_user(user: Operator, user_id: int, body: UserPatch) -> dict[str, Any]:
        return admin.update_user(
            node,
            user_id,
            _actor(user),
            role=body.role,
            clearance=body.clearance,
            signatory_key_id=body.signatory_key_id,
        )

    @router.post("/users/{user_id}/disable")
    def disable_user(user: Operator, user_id: int) -> dict[str, Any]:
        return admin.set_user_disabled(node, user_id, True, _actor(user))

    @router.post("/users/{user_id}/enable")
    def enable_user(user: Operator, user_id: int) -> dict[str, Any]:
        return admin.set_user_disabled(node, user_id, False, _actor(user))

    @router.post("/users/{user_id}/token")
    def rotate_token(user: Operator, user_id: int) -> dict[str, Any]:
        view, token = admin.rotate_user_token(node, user_id, _actor(user))
        return {**view, "token": token}

    # outbox
    @router.get("/outbox")
    def outbox(
        user: Operator,
        state: str | None = None,
        peer: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        return admin.list_outbox(node, state, peer, limit, offset)

    @router.get("/outbox/{message_id}")
    def outbox_item(user: Operator, message_id: str) -> dict[str, Any]:
        return admin.outbox_item(node, message_id)

    @router.post("/outbox/{message_id}/retry")
    def retry(user: Operator, message_id: str) -> dict[str, Any]:
        view = admin.retry_now(node, message_id, _actor(user))
        _wake(node)
        return view

    @router.post("/outbox/{message_id}/park")
    def park(user: Operator, message_id: str, body: Reason) -> dict[str, Any]:
        return admin.park_message(node, message_id, body.reason, _actor(user))

    @router.post("/outbox/{message_id}/requeue")
    def requeue(user: Operator, message_id: str) -> dict[str, Any]:
        view = admin.requeue_message(node, message_id, _actor(user))
        _wake(node)
        return view

    # originals (Art. 4) and the agreement (Art. 12, 14)
    @router.get("/originals")
    def originals(user: Operator, overdue: bool | None = None, owed_by: str | None = None) -> dict[str, Any]:
        return admin.list_originals(node, overdue, owed_by)

    @router.get("/agreement")
    def agreement(user: Operator) -> dict[str, Any]:
        return admin.agreement_view(node)

    @router.post("/agreement/versions", status_code=201)
    def add_agreement_version(user: Operator, body: AgreementVersionIn) -> dict[str, Any]:
        return admin.add_agreement_version(
            node, body.effective_from, body.reference, body.changes, _actor(user)
        )

    return router


# --- health and metrics ------------------------------------------------------------------


def ops_router(node: Node) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok", "party": node.party}

    @router.get("/readyz")
    def readyz(peers: str = Query("report", pattern="^(report|required)$")) -> JSONResponse:
        """Readiness: the database answers and its schema is current; peers' reachability is reported.

        A peer that is down does not make this node unready (messages wait in
        the outbox); ``?peers=required`` makes it so, for checks that want it.
        """
        body: dict[str, Any] = {"party": node.party}
        ok = True
        try:
            with session_scope(node.engine, readonly=True) as s:
                s.execute(text("SELECT 1"))
            current = is_up_to_date(read_only(node.engine))
            body["database"] = "ok" if current else "schema_outdated"
            ok = current
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            body["database"] = f"unavailable: {type(exc).__name__}"
            ok = False
        try:
            body["peers"] = admin.peer_reachability(node)
        except Exception as exc:  # noqa: BLE001
            body["peers"] = {"error": type(exc).__name__}
        reachable = all(
            v.get("reachable") is not False for v in body["peers"].values() if isinstance(v, dict)
        )
        if peers == "required" and not reachable:
            ok = False
        body["status"] = "ready" if ok else "unavailable"
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def prometheus(user: Scraper) -> Response:
        data = await asyncio.to_thread(metrics.render, node)
        return Response(data, media_type=metrics.CONTENT_TYPE_LATEST)

    return router


# --- the peer port: bundle push ------------------------------------------------------------


def peer_bundle_router(node: Node) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/bundle")
    async def receive_bundle(request: Request) -> JSONResponse:
        """A peer hands over its new root-signed bundle; verified against the root we pin for it."""
        from service.peer_api import party_of_certificate

        party = party_of_certificate(node, getattr(request.state, "tls_peer_cert", None))
        if party is None:
            exc = ServiceError("client certificate belongs to no known peer", code="peer.unknown", status=403)
            return JSONResponse(error_body(exc), status_code=403)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > admin.MAX_BUNDLE_BYTES:
                exc = ServiceError("bundle too large", code="trust.bad_bundle", status=413)
                return JSONResponse(error_body(exc), status_code=413)
        result = await asyncio.to_thread(admin.accept_pushed_bundle, node, party, bytes(data))
        return JSONResponse(result)

    return router

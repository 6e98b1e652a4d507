"""The peer API: what another Party's node may call, over mutual TLS only.

Served on its own port. The TLS layer already refused anyone without a client
certificate from a known peer's CA; here the certificate is mapped to the
Party it belongs to, and that Party must be the envelope's sender.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from keys import peer_party
from protocol import BatchError, ProlinkError, compact_json, decode_batch
from service.errors import error_body, install_error_handlers, status_for
from service.http_head import HeadLimitedHttpToolsProtocol
from service.metrics import NO_TELEMETRY
from service.node import PEER_CACHE_SECONDS, SPOOL_MEMORY, Node

ENVELOPE_MEDIA_TYPE = "application/vnd.prolink.envelope"
BATCH_MEDIA_TYPE = "application/vnd.prolink.envelope-batch"
BATCH_PATH = "/v1/envelopes/batch"


class _Answer(JSONResponse):
    """An answer to a delivery (its receipts) written by ``protocol.compact_json``: the bytes Starlette's
    ``JSONResponse`` writes, faster (a batch of 8 receipts: the whole response made in 20 µs, not 71)."""

    def render(self, content: Any) -> bytes:
        return compact_json(content)


def _with_peer_cert(app_state: dict[str, Any], transport: asyncio.Transport) -> dict[str, Any]:
    """``app_state`` plus the DER of the client certificate the TLS handshake verified (None without TLS).

    A connection reaches ``connection_made`` only after a completed handshake, so
    a connection refused by the TLS context never gets here.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return {**app_state, "tls_peer_cert": der}


def _dropped_if_idle(protocol: Any) -> bool:
    """At a graceful stop: drop the connection at once if no request is on it (True), else leave it be.

    uvicorn closes an idle connection, and on TLS a close waits for the peer's
    close_notify (up to the event loop's 30 s SSL shutdown timeout). A peer's
    idle kept-alive connection never answers it (its client is not reading),
    so every stop took 30 s. Nothing is lost by dropping it: no request is on
    it, and the peer's client opens a new connection for its next one. A
    connection with a request on it finishes the request first, as before.
    """
    idle = protocol.cycle is None or protocol.cycle.response_complete
    if idle and protocol.transport.get_write_buffer_size() == 0:  # no answer is still on its way out either
        protocol.transport.abort()
        return True
    return False


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, handing the verified client certificate to the app via ``scope["state"]``.

    The fallback where httptools is not installed (``service.server.http_protocols``).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = _with_peer_cert(self.app_state, transport)

    def shutdown(self) -> None:
        if not _dropped_if_idle(self):
            super().shutdown()


PeerCertHttpToolsProtocol: type[asyncio.Protocol] | None
if HeadLimitedHttpToolsProtocol is None:  # httptools is not installed: service.server falls back to h11
    PeerCertHttpToolsProtocol = None
else:

    class PeerCertHttpToolsProtocol(HeadLimitedHttpToolsProtocol):  # type: ignore[no-redef,valid-type,misc]
        """uvicorn's httptools protocol (heads bounded: ``service.http_head``), capturing the client
        certificate like ``PeerCertH11Protocol``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.app_state = _with_peer_cert(self.app_state, transport)

        def shutdown(self) -> None:
            if not _dropped_if_idle(self):
                super().shutdown()


def party_of_certificate(
    node: Node, der: bytes | None, cache: dict[bytes, tuple[float, str | None]] | None = None
) -> str | None:
    """The peer whose CA (from its bundle) issued this client certificate, if any.

    A peer reuses one certificate for every delivery, so the answer is kept for
    as long as peer facts are (``PEER_CACHE_SECONDS``).
    """
    if der is None:
        return None
    now = time.monotonic()
    if cache is not None and der in cache and now - cache[der][0] <= PEER_CACHE_SECONDS:
        return cache[der][1]
    parties = [node.peer(p, active_only=False) for p in node.peer_parties()]
    try:
        party: str | None = peer_party(der, parties).party
    except ProlinkError:
        party = None
    if cache is not None:
        if len(cache) > 64:
            cache.clear()
        cache[der] = (now, party)
    return party


def create_peer_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="prolink peer API", docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY
    )
    install_error_handlers(app)
    cert_parties: dict[bytes, tuple[float, str | None]] = {}

    @app.post("/v1/envelopes")
    async def deliver(request: Request) -> JSONResponse:
        limit = node.settings.max_envelope_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return JSONResponse(error_body(_too_large(limit)), status_code=413)
        spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        try:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return JSONResponse(error_body(_too_large(limit)), status_code=413)
                spooled.write(chunk)
            der = getattr(request.state, "tls_peer_cert", None)
            tls_peer = party_of_certificate(node, der, cert_parties)
            if der is not None and tls_peer is None:
                exc = ProlinkError(
                    "client certificate belongs to no known peer", code="envelope.unknown_sender"
                )
                return JSONResponse(error_body(exc), status_code=403)
            result = await asyncio.to_thread(node.receive, spooled, tls_peer)  # type: ignore[arg-type]
        finally:
            spooled.close()
        return _Answer(result.body, status_code=result.status)

    @app.post(BATCH_PATH)
    async def deliver_batch(request: Request) -> JSONResponse:
        """Several envelopes (``protocol.encode_batch``): one answer each, in order, after one commit."""
        limit = node.settings.batch_max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return JSONResponse(error_body(_too_large(limit, "batch")), status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return JSONResponse(error_body(_too_large(limit, "batch")), status_code=413)
        der = getattr(request.state, "tls_peer_cert", None)
        tls_peer = party_of_certificate(node, der, cert_parties)
        if der is not None and tls_peer is None:
            exc = ProlinkError("client certificate belongs to no known peer", code="envelope.unknown_sender")
            return JSONResponse(error_body(exc), status_code=403)
        try:
            envelopes = decode_batch(
                bytes(body), max_items=node.settings.batch_max_items, max_envelope_bytes=limit
            )
        except BatchError as exc:
            await asyncio.to_thread(node.record_refused_batch, exc)
            return JSONResponse(error_body(exc), status_code=status_for(exc))
        answers = await asyncio.to_thread(node.receive_batch, envelopes, tls_peer)
        return _Answer({"results": [{"http_status": a.status, **a.body} for a in answers]})

    @app.get("/v1/bundle")
    def bundle() -> Response:
        return Response(node.identity.bundle_bytes(), media_type="application/json")

    @app.get("/v1/ping")
    def ping() -> dict[str, Any]:
        return {"party": node.party, "status": "ok"}

    from service.admin_api import peer_bundle_router  # POST /v1/bundle: a peer's new bundle after a rotation

    app.include_router(peer_bundle_router(node))
    from service.audit_api import install_peer_routes  # the audit log's head exchange

    install_peer_routes(app, node)
    return app


def _too_large(limit: int, what: str = "envelope") -> ProlinkError:
    return ProlinkError(f"{what} exceeds the limit of {limit} bytes", code=f"{what}.too_large")

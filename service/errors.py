"""How errors leave the node: one JSON shape, a stable code, the right status.

Every rejection is ``{"error": {"code": ..., "message": ..., "field": ...}}``.
Bad input never produces a 500: protocol errors map to 4xx by their code,
request validation to 422, and anything unexpected is logged (without
content) and answered with ``internal.error`` so no traceback leaks.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol import ProlinkError, read_json

log = structlog.get_logger("prolink.errors")


class ServiceError(ProlinkError):
    """A rejection decided by the node itself (auth, roles, not found, conflicts)."""

    def __init__(self, message: str, *, code: str, status: int, field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.field = field


# First matching prefix wins; more specific prefixes come first.
_STATUS_BY_CODE: tuple[tuple[str, int], ...] = (
    ("envelope.conflicting_duplicate", 409),
    ("envelope.too_large", 413),
    ("envelope.unknown_sender", 403),
    ("envelope.wrong_recipient", 421),
    ("envelope.bad_signature", 401),
    ("envelope.replayed", 400),
    ("envelope.duplicate_in_flight", 409),
    ("envelope.", 400),
    ("batch.too_large", 413),
    ("batch.", 400),
    ("encoding.", 400),
    ("receipt.", 400),
    ("trust.fingerprint_mismatch", 409),
    ("trust.", 403),
    ("document.", 422),
    ("lifecycle.", 409),
    ("policy.", 403),
    ("keys.", 400),
    ("storage.blob_too_large", 413),
    ("storage.", 500),  # stored data missing or altered: the node's fault, never the caller's
)


def status_for(exc: ProlinkError) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    for prefix, status in _STATUS_BY_CODE:
        if exc.code.startswith(prefix):
            return status
    return 400


def error_body(exc: ProlinkError, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": exc.code, "message": exc.message}
    field = getattr(exc, "field", None)
    if field:
        err["field"] = field
    return {"error": err, **extra}


def peer_error_code(response: Any) -> str:
    """The stable code in another node's error answer (an ``httpx.Response``), or "" if it has none."""
    try:
        code = read_json(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return code if isinstance(code, str) else ""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProlinkError)
    async def _prolink(_: Request, exc: ProlinkError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        body = {
            "error": {
                "code": "request.invalid",
                "message": str(first.get("msg", "invalid request")),
                "field": field,
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "request.not_found", 405: "request.method_not_allowed"}.get(
            exc.status_code, "request.error"
        )
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database went away (restart, network): nothing was committed; the caller may try again.
        log.error("database_unavailable", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse(
            {
                "error": {
                    "code": "database.unavailable",
                    "message": "the node's database is unavailable; try again shortly",
                }
            },
            status_code=503,
            headers={"retry-after": "5"},
        )

    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected_error", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse(
            {"error": {"code": "internal.error", "message": "internal error; see the node log"}},
            status_code=500,
        )

"""How errors leave the node: a stable code and the right status, never a traceback."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError, OperationalError

from protocol import EnvelopeError
from service.errors import install_error_handlers


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


def test_a_lost_database_connection_is_503_database_unavailable_with_retry_after() -> None:
    r = app_raising(OperationalError("SELECT 1", {}, Exception("server closed the connection"))).get("/boom")
    assert r.status_code == 503 and r.json()["error"]["code"] == "database.unavailable"
    assert r.headers["retry-after"] == "5"
    assert "server closed" not in r.text  # no driver detail leaks


def test_any_other_unexpected_error_is_500_internal_error_without_detail() -> None:
    r = app_raising(IntegrityError("INSERT", {}, Exception("secret detail"))).get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal.error"
    assert "secret" not in r.text


def test_protocol_errors_keep_their_code_and_status() -> None:
    r = app_raising(EnvelopeError("bad", code="envelope.bad_signature")).get("/boom")
    assert r.status_code == 401 and r.json()["error"]["code"] == "envelope.bad_signature"

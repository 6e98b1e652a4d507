"""The user API's reading of a JSON body: any bytes get an answer with a stable code, never a 500, and a
refused body stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db import session_scope
from service.demo import setup_party
from service.models import Message
from service.server import build_node
from service.user_api import create_user_app


@pytest.fixture(scope="module")
def kz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, object]]:
    party = setup_party(Path(tmp_path_factory.mktemp("body")), "KZ", "Генеральная прокуратура")
    node = build_node(party.data_dir)
    with TestClient(create_user_app(node), raise_server_exceptions=False) as client:
        yield client, party.tokens["signatory"], node


def _messages(node: object) -> int:
    with session_scope(node.engine, readonly=True) as s:  # type: ignore[attr-defined]
        return int(s.execute(select(func.count()).select_from(Message)).scalar_one())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "request.malformed_json"),
        (b"\xff\xfe\x00", 400, "request.malformed_json"),
        (b"[" * 100_000, 400, "request.malformed_json"),  # deeper than the parser goes: was a 500
        (b'{"a": 1}' * 2, 400, "request.malformed_json"),
        (b"[1]", 422, "request.invalid"),
        (b'"text"', 422, "request.invalid"),
        (b"18446744073709551616", 422, "request.invalid"),
    ],
)
def test_a_body_that_is_no_json_object_gets_its_code_and_stores_nothing(
    kz: tuple[TestClient, str, object], body: bytes, status: int, code: str
) -> None:
    client, token, node = kz
    before = _messages(node)
    r = client.post(
        "/v1/messages",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert _messages(node) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "request", "urgent": NaN}',  # NaN: read, as json.loads reads it
        b'{"kind": "request", "case_number": 18446744073709551616}',
    ],
)
def test_a_json_object_the_standard_library_reads_is_read_the_same(
    kz: tuple[TestClient, str, object], body: bytes
) -> None:
    """Read as ``json.loads`` reads it (``protocol.read_json``): refused by the document's rules, not as
    JSON."""
    client, token, _ = kz
    r = client.post(
        "/v1/messages",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] not in ("request.malformed_json", "internal.error")

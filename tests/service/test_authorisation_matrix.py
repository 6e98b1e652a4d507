"""Every user-API endpoint against every role (issue 5): the expected outcome table is here, in the test.

The node runs in-process (FastAPI's TestClient) over a real data directory and
SQLite database. "allowed" means the role check let the call through (it may
still be a 404 or 422 for the made-up ids used here); "denied" means 403
``auth.wrong_role``. No call may ever answer 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.auth import create_user
from service.demo import setup_party
from service.server import build_node
from service.user_api import create_user_app

ROLES = ("clerk", "signatory", "reader", "operator", "auditor")
X = "00000000-0000-4000-8000-000000000000"
STAFF = {"clerk", "signatory", "reader", "operator"}
READERS = {"reader", "clerk", "signatory"}
DRAFTERS = {"clerk", "signatory", "operator"}

#: (method, path template, concrete path, roles allowed)
MATRIX: list[tuple[str, str, str, set[str]]] = [
    ("GET", "/v1/messages", "/v1/messages", STAFF),
    ("POST", "/v1/messages", "/v1/messages", {"signatory"}),
    ("GET", "/v1/messages/{direction}/{message_id}", f"/v1/messages/out/{X}", STAFF),
    ("GET", "/v1/messages/in/{message_id}/content", f"/v1/messages/in/{X}/content", READERS),
    (
        "GET",
        "/v1/messages/in/{message_id}/attachments/{index}",
        f"/v1/messages/in/{X}/attachments/0",
        READERS,
    ),
    ("GET", "/v1/messages/in/{message_id}/export", f"/v1/messages/in/{X}/export", READERS),
    ("GET", "/v1/requests", "/v1/requests", STAFF),
    ("GET", "/v1/requests/{thread_id}", f"/v1/requests/{X}", STAFF),
    ("GET", "/v1/requests/{thread_id}/timeline", f"/v1/requests/{X}/timeline", STAFF),
    ("POST", "/v1/drafts", "/v1/drafts", DRAFTERS),
    ("GET", "/v1/drafts", "/v1/drafts", DRAFTERS),
    ("GET", "/v1/drafts/{draft_id}", f"/v1/drafts/{X}", DRAFTERS),
    ("POST", "/v1/drafts/{draft_id}/sign", f"/v1/drafts/{X}/sign", {"signatory"}),
    ("DELETE", "/v1/drafts/{draft_id}", f"/v1/drafts/{X}", DRAFTERS),
    ("POST", "/v1/consents", "/v1/consents", READERS),
    ("GET", "/v1/consents", "/v1/consents", STAFF),
    ("GET", "/v1/originals", "/v1/originals", STAFF),
    ("GET", "/v1/directory/{party}", "/v1/directory/BY", STAFF),
    ("GET", "/v1/agreement", "/v1/agreement", STAFF),
    ("POST", "/v1/admin/agreement/termination", "/v1/admin/agreement/termination", {"operator"}),
]
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    from datetime import UTC, datetime

    party = setup_party(Path(tmp_path_factory.mktemp("matrix")), "KZ", "Генеральная прокуратура")
    node = build_node(party.data_dir)
    _, party.tokens["auditor"] = create_user(node.engine, "auditor KZ", "auditor", datetime.now(UTC))
    app = create_user_app(node)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, party.tokens


def test_the_matrix_covers_every_user_api_endpoint(client) -> None:
    paths = client[0].app.openapi()["paths"]
    documented = {
        (method.upper(), path)
        for path, ops in paths.items()
        for method in ops
        if path.startswith("/v1/")
        and (not path.startswith("/v1/admin/") or path == "/v1/admin/agreement/termination")
    }
    assert documented == {(m, t) for m, t, _, _ in MATRIX}


@pytest.mark.parametrize(
    ("method", "template", "path", "allowed"), MATRIX, ids=[f"{m} {t}" for m, t, _, _ in MATRIX]
)
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(client, role: str, method: str, template: str, path: str, allowed: set[str]) -> None:
    c, tokens = client
    r = c.request(method, path, headers={"authorization": f"Bearer {tokens[role]}"}, json={})
    assert r.status_code != 500, r.text
    denied = r.status_code == 403 and r.json()["error"]["code"] == "auth.wrong_role"
    assert denied == (role not in allowed), (role, method, path, r.status_code, r.text)


@pytest.mark.parametrize(
    ("method", "template", "path", "allowed"), MATRIX, ids=[f"{m} {t}" for m, t, _, _ in MATRIX]
)
def test_no_token_is_401_everywhere(client, method: str, template: str, path: str, allowed: set[str]) -> None:
    r = client[0].request(method, path, json={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.missing_token"


def test_the_token_check_does_not_wait_for_a_connection_held_by_other_threads(tmp_path: Path) -> None:
    """On SQLite the token is checked on the event loop, through a pool of the loop's own: with every
    connection of the node's pool held elsewhere (streams hold one while the loop sends), it still answers
    at once instead of stalling the loop until the pool's timeout."""
    import time

    party = setup_party(tmp_path, "KZ", "Генеральная прокуратура")
    node = build_node(party.data_dir)
    app = create_user_app(node)
    pool = node.engine.pool
    held = [node.engine.raw_connection() for _ in range(pool.size() + pool._max_overflow)]  # type: ignore[attr-defined]
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            started = time.monotonic()
            r = c.post("/v1/messages", headers={"authorization": f"Bearer {party.tokens['reader']}"}, json={})
            elapsed = time.monotonic() - started
    finally:
        for connection in held:
            connection.close()
        node.engine.dispose()
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.wrong_role"  # the token was read
    assert elapsed < 5

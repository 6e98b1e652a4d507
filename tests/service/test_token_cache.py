"""PostgreSQL: tokens checked once, until ``user_account`` changes (``service.token_cache``).

What must hold, against a real server: a token read while the cache hears
changes is answered from it afterwards, with no read; any change to the users'
table (a user disabled, a token rotated, a role changed, made through the admin
functions or by plain SQL) is refused once it commits, within the notification's
delay; a read that began before a change is not kept; and while the cache cannot
hear (stopped, its connection killed, reconnecting) every request reads the
database, so a change is refused at once; and the cache answers nothing unless
its own probes come back through the server (not behind a pooler that drops
notifications).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service import auth
from service.admin import rotate_user_token, set_user_disabled, update_user
from service.auth import Principal, create_user, hash_token
from service.db import session_scope
from service.demo import setup_party
from service.node import Node
from service.server import build_node
from service.token_cache import APPLICATION_NAME, TokenCache
from service.user_api import create_user_app
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def node(tmp_path: Path, postgres_url: str) -> Iterator[Node]:
    party = setup_party(tmp_path, "KZ", "Генеральная прокуратура Республики Казахстан", postgres_url)
    built = build_node(party.data_dir)
    cache = TokenCache(built.engine)
    built.token_cache = cache
    cache.start()
    try:
        wait_for("the token cache listening", cache.hears, timeout=10)
        yield built
    finally:
        cache.stop()
        built.engine.dispose()


@pytest.fixture
def api(node: Node) -> Iterator[TestClient]:
    with TestClient(create_user_app(node)) as client:
        yield client


def get(api: TestClient, token: str) -> int:
    return api.get("/v1/messages", headers={"authorization": f"Bearer {token}"}).status_code


def test_a_token_checked_once_is_answered_from_the_cache_postgres(
    node: Node, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = create_user(node.engine, "reader KZ", "reader", NOW)
    reads: list[object] = []
    read = auth.loop_fetchall_async

    async def counted(*args: object, **kwargs: object) -> object:
        reads.append(args[1])
        return await read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth, "loop_fetchall_async", counted)
    assert get(api, token) == 200
    assert node.token_cache is not None
    assert isinstance(node.token_cache.get(hash_token(token)), Principal)
    for _ in range(5):
        assert get(api, token) == 200
    assert len(reads) == 1


@pytest.mark.parametrize("change", ["disabled", "rotated", "role", "plain_sql"])
def test_a_change_to_a_cached_user_is_refused_once_it_commits_postgres(
    node: Node, api: TestClient, change: str
) -> None:
    user, token = create_user(node.engine, "reader KZ", "reader", NOW)
    assert get(api, token) == 200  # now cached
    assert node.token_cache is not None and node.token_cache.get(hash_token(token)) is not None
    expected = 401 if change == "rotated" else 403
    if change == "disabled":
        set_user_disabled(node, user.id, True, actor="operator:test")  # type: ignore[arg-type]
    elif change == "rotated":
        rotate_user_token(node, user.id, actor="operator:test")  # type: ignore[arg-type]
    elif change == "role":
        update_user(node, user.id, actor="operator:test", role="auditor")  # type: ignore[arg-type]
    else:
        with session_scope(node.engine) as s:
            s.execute(text("UPDATE user_account SET disabled = true WHERE id = :id"), {"id": user.id})
    wait_for(f"the {change} user refused", lambda: get(api, token) == expected, timeout=1.0)
    for _ in range(3):  # and from then on
        assert get(api, token) == expected


def test_a_read_that_began_before_a_change_is_not_kept_postgres(node: Node) -> None:
    cache = node.token_cache
    assert cache is not None
    principal = Principal(1, "reader KZ", "reader", "unrestricted", None)
    began = cache.generation
    with session_scope(node.engine) as s:  # a change commits while the read is under way
        s.execute(text("UPDATE user_account SET name = name"))
    wait_for("the change heard", lambda: cache.generation != began, timeout=1.0)
    cache.put("d" * 64, principal, began)
    assert cache.get("d" * 64) is None
    cache.put("d" * 64, principal, cache.generation)
    assert cache.get("d" * 64) == principal


def test_while_the_cache_cannot_hear_every_request_reads_the_database_postgres(
    node: Node, api: TestClient
) -> None:
    user, token = create_user(node.engine, "reader KZ", "reader", NOW)
    assert get(api, token) == 200
    cache = node.token_cache
    assert cache is not None
    with psycopg.connect(
        node.engine.url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as admin:  # the listener's connection dies
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    assert killed == (1,)
    wait_for("the cache noticing it cannot hear", lambda: not cache.hears(), timeout=3.0)
    cache.stop()  # and stays deaf: a change now must be refused at once, by the read
    assert cache.get(hash_token(token)) is None
    set_user_disabled(node, user.id, True, actor="operator:test")  # type: ignore[arg-type]
    assert get(api, token) == 403


class _ProbesLost(TokenCache):
    """As behind a connection pooler that does not pass notifications on: its probes never come back."""

    def _send_probe(self, payload: str) -> tuple[int, bool]:
        self._conn.execute("SELECT pg_notify('prolink_elsewhere', %s)", (payload,))
        return self._conn.info.backend_pid, True


def test_a_cache_whose_probes_do_not_come_back_answers_nothing_postgres(node: Node) -> None:
    """Not even when another cache (another replica's) probes the same channel in step with it."""
    deaf, other = _ProbesLost(node.engine), TokenCache(node.engine)
    deaf.start()
    other.start()
    try:
        wait_for("three rounds", lambda: deaf._probes >= 3 and other.hears(), timeout=5)
        assert not deaf.hears()
        deaf.put("d" * 64, Principal(1, "reader KZ", "reader", "unrestricted", None), deaf.generation)
        assert deaf.get("d" * 64) is None
    finally:
        deaf.stop()
        other.stop()


def test_with_the_trigger_disabled_the_cache_answers_nothing_and_a_change_is_refused_at_once_postgres(
    node: Node, api: TestClient
) -> None:
    """Changes made while the trigger is disabled (or dropped) are never announced: the cache must not trust
    itself then, even though its probes still come back."""
    user, token = create_user(node.engine, "reader KZ", "reader", NOW)
    assert get(api, token) == 200
    cache = node.token_cache
    assert cache is not None and cache.get(hash_token(token)) is not None
    with session_scope(node.engine) as s:
        s.execute(text("ALTER TABLE user_account DISABLE TRIGGER user_account_changed"))
    try:
        wait_for("the cache distrusting itself", lambda: not cache.hears(), timeout=2.0)
        set_user_disabled(node, user.id, True, actor="operator:test")  # type: ignore[arg-type] - not announced
        assert get(api, token) == 403
    finally:
        with session_scope(node.engine) as s:
            s.execute(text("ALTER TABLE user_account ENABLE TRIGGER user_account_changed"))
    wait_for("the cache hearing again", cache.hears, timeout=3.0)


def test_a_probe_is_taken_only_from_the_session_that_sent_it_postgres(node: Node) -> None:
    """Anyone may notify the channel: a payload that copies a probe's, sent by another session, proves
    nothing."""
    deaf = _ProbesLost(node.engine)
    deaf.start()
    try:
        wait_for("a first round", lambda: deaf._probes >= 1, timeout=5)
        libpq = node.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as other:
            for _ in range(12):  # the payload of the probe it is listening for, sent by another session
                payload = f"probe:{deaf._name}:{deaf._probes}"
                other.execute("SELECT pg_notify('prolink_user_account', %s)", (payload,))
                time.sleep(0.1)
        assert not deaf.hears()
    finally:
        deaf.stop()

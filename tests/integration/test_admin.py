"""The operator's admin API and its refusals, on two real nodes (issue: the operator admin endpoint).

Peers (list, bundle import, suspend/resume), keys (rotation with an overlap
while messages are in flight, revocation, signatories), users, outbox (retry,
park, requeue: never a duplicate delivery), originals, agreement configuration
versions (Art. 12), health, and ``/metrics`` scraped during an exchange.
"""

from __future__ import annotations

import base64
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import protocol
from keys import export_bundle, load_identity, read_signing_key, rotate_node_keys
from tests.integration import helpers
from tests.integration.helpers import (
    craft_envelope,
    deliver,
    messages,
    request_fields,
    send,
    trusted,
    wait_for,
)

pytestmark = pytest.mark.integration

FAST = {
    "delivery_backoff_base_seconds": 0.2,
    "delivery_backoff_max_seconds": 1.0,
    "delivery_lease_seconds": 5.0,
}


def op(p) -> httpx.Client:
    return p.client("operator")


def all_out(p, status: str = "delivered") -> bool:
    return all(m.status == status for m in messages(p, "out"))


# --- who may call what --------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/v1/admin/peers", None),
    ("GET", "/v1/admin/peers/BY", None),
    ("POST", "/v1/admin/peers/BY/bundle", {"bundle": "", "fingerprint": "1"}),
    ("POST", "/v1/admin/peers/BY/refresh", None),
    ("POST", "/v1/admin/peers/BY/suspend", {}),
    ("POST", "/v1/admin/peers/BY/resume", None),
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys/rotate", {"overlap_seconds": 60}),
    ("POST", "/v1/admin/keys/abc/revoke", {"reason": "x"}),
    ("GET", "/v1/admin/signatories", None),
    (
        "POST",
        "/v1/admin/signatories",
        {"person": "A", "position": "B", "valid_from": "2026-01-01", "valid_until": "2026-12-31"},
    ),
    ("POST", "/v1/admin/signatories/abc/revoke", {"reason": "x"}),
    ("GET", "/v1/admin/users", None),
    ("POST", "/v1/admin/users", {"name": "X", "role": "clerk"}),
    ("PATCH", "/v1/admin/users/1", {"role": "clerk"}),
    ("POST", "/v1/admin/users/1/disable", None),
    ("POST", "/v1/admin/users/1/enable", None),
    ("POST", "/v1/admin/users/1/token", None),
    ("GET", "/v1/admin/outbox", None),
    ("GET", "/v1/admin/outbox/x", None),
    ("POST", "/v1/admin/outbox/x/retry", None),
    ("POST", "/v1/admin/outbox/x/park", {"reason": "x"}),
    ("POST", "/v1/admin/outbox/x/requeue", None),
    ("GET", "/v1/admin/originals", None),
    ("GET", "/v1/admin/agreement", None),
    (
        "POST",
        "/v1/admin/agreement/versions",
        {"effective_from": "2030-01-01", "reference": "x", "changes": {}},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_every_admin_endpoint_needs_the_operator_role(shared_pair, method, path, body) -> None:
    p = shared_pair.kz
    with httpx.Client(base_url=p.api, timeout=30) as anonymous:
        r = anonymous.request(method, path, json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.missing_token"
    for role in ("clerk", "signatory", "reader"):
        with p.client(role) as c:
            r = c.request(method, path, json=body)
        assert r.status_code == 403, (role, r.text)
        assert r.json()["error"]["code"] == "auth.wrong_role"


def test_metrics_need_an_operator_or_auditor_token(shared_pair) -> None:
    p = shared_pair.kz
    assert httpx.get(p.api + "/metrics").json()["error"]["code"] == "auth.missing_token"
    with p.client("clerk") as c:
        assert c.get("/metrics").status_code == 403
    with op(p) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def _tls_answer(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(request)
            return tls.recv(1024)
    except (ssl.SSLError, ConnectionError, OSError):
        return b""


def test_a_peer_certificate_opens_nothing_on_the_admin_port(shared_pair) -> None:
    kz, by = shared_pair.kz, shared_pair.by
    ident = load_identity(kz.data_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(ident.tls_cert_path, ident.tls_key_path)
    # The internal port speaks plain HTTP on 127.0.0.1: a TLS client with KZ's certificate gets nothing...
    assert _tls_answer(by.user_port, ctx, b"GET /v1/admin/peers HTTP/1.1\r\nhost: x\r\n\r\n") == b""
    # ...and without a bearer token the admin API answers nobody, whatever the network path.
    r = httpx.get(by.api + "/v1/admin/peers")
    assert r.status_code == 401


def test_a_user_token_gets_no_http_answer_on_the_peer_port(shared_pair) -> None:
    by = shared_pair.by
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trusted(by).bundle.tls_ca_pem)
    token = by.tokens["operator"]
    for path in ("/v1/admin/peers", "/v1/bundle", "/metrics"):
        request = f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode()
        assert _tls_answer(by.peer_port, ctx, request) == b"", path
    with pytest.raises((httpx.ConnectError, ssl.SSLError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(
            by.url + "/v1/bundle", headers={"authorization": f"Bearer {token}"}, verify=ctx, content=b"{}"
        )


def test_health_and_readiness(make_pair) -> None:
    pair = make_pair("sqlite")
    pair.start()
    assert httpx.get(pair.kz.api + "/healthz").json() == {"status": "ok", "party": "KZ"}
    ready = httpx.get(pair.kz.api + "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["database"] == "ok" and body["peers"]["BY"]["reachable"] is True
    pair.stop(pair.by)
    time.sleep(5.5)  # reachability answers are cached for 5 s
    body = httpx.get(pair.kz.api + "/readyz").json()
    assert body["status"] == "ready" and body["peers"]["BY"]["reachable"] is False  # a peer down: still ready
    assert httpx.get(pair.kz.api + "/readyz?peers=required").status_code == 503


# --- peers ---------------------------------------------------------------------------------------


def test_peer_list_shows_bundle_delivery_and_queue(shared_pair) -> None:
    kz, by = shared_pair.kz, shared_pair.by
    sent = send(kz, request_fields("BY"))
    helpers.wait_status(kz, sent["id"])
    with op(kz) as c:
        peers = c.get("/v1/admin/peers").json()["peers"]
        one = c.get("/v1/admin/peers/BY").json()
        assert c.get("/v1/admin/peers/RU").json()["error"]["code"] == "peer.not_found"
    assert [p["party"] for p in peers] == ["BY"]
    _, fingerprint = export_bundle(by.data_dir)
    assert one["fingerprint"] == fingerprint and one["status"] == "active"
    assert one["bundle_version"] == trusted(by).bundle.version
    assert one["endpoint"] == by.url and one["last_successful_delivery"] is not None
    assert one["queue_depth"] == 0 and set(one["queue"]) == {"queued", "in_flight", "parked"}
    assert "log_head" in one and one["bundle"]["signing_keys"]


def test_operator_imports_a_rotated_peer_bundle_after_the_fingerprint_check(make_pair) -> None:
    pair = make_pair("sqlite")
    pair.start(pair.kz)  # BY stays down: its new bundle reaches KZ only through the operator
    old_bundle, fingerprint = export_bundle(pair.by.data_dir)
    new_bundle = rotate_node_keys(pair.by.data_dir, datetime.now(UTC), timedelta(days=7))
    with op(pair.kz) as c:

        def imp(bundle: bytes, fp: str):
            return c.post(
                "/v1/admin/peers/BY/bundle",
                json={"bundle": base64.b64encode(bundle).decode(), "fingerprint": fp},
            )

        wrong = "0" * 5 + fingerprint[5:]
        r = imp(new_bundle, wrong)
        assert r.status_code == 409 and r.json()["error"]["code"] == "trust.fingerprint_mismatch"
        assert c.get("/v1/admin/peers/BY").json()["bundle_version"] == 1
        r = imp(new_bundle, fingerprint)
        assert r.status_code == 200 and r.json() == {"party": "BY", "bundle_version": 2, "outcome": "updated"}
        assert imp(new_bundle, fingerprint).json()["outcome"] == "unchanged"
        r = imp(old_bundle, fingerprint)
        assert r.status_code == 409 and r.json()["error"]["code"] == "trust.bundle_rollback"
        _, kz_fp = export_bundle(pair.kz.data_dir)
        r = imp(export_bundle(pair.kz.data_dir)[0], kz_fp)  # a real bundle, but another Party's
        assert r.status_code == 409 and r.json()["error"]["code"] == "trust.wrong_party"
        r = c.post("/v1/admin/peers/BY/bundle", json={"bundle": "***", "fingerprint": fingerprint})
        assert r.status_code == 422
        assert c.get("/v1/admin/peers/BY").json()["bundle_version"] == 2


def test_a_suspended_peer_gets_nothing_and_its_messages_are_held_not_failed(make_pair) -> None:
    pair = make_pair("sqlite", **FAST)
    pair.start()
    kz, by = pair.kz, pair.by
    with op(kz) as c:
        r = c.post("/v1/admin/peers/BY/suspend", json={"reason": "плановые работы"})
        assert r.status_code == 200 and r.json()["status"] == "suspended"
        assert r.json()["suspended_reason"] == "плановые работы"
        assert (
            c.post("/v1/admin/peers/BY/suspend", json={}).json()["error"]["code"] == "peer.already_suspended"
        )
    # What is sent to BY meanwhile is queued and held, like what was queued before the suspension.
    held = send(kz, request_fields("BY"))["id"]
    time.sleep(1)
    with op(kz) as c:
        item = c.get(f"/v1/admin/outbox/{held}").json()
        assert item["state"] == "queued" and item["held"] is True and item["attempts"] == 0
    # BY -> KZ: KZ accepts nothing from a suspended peer; BY keeps retrying, nothing is lost.
    from_by = send(by, request_fields("KZ"))["id"]
    wait_for("a refused attempt", lambda: _outbox(by, from_by).get("last_error"), 30)
    assert messages(kz, "in") == []
    assert "HTTP 403" in (_outbox(by, from_by)["last_error"] or "")
    with op(kz) as c:
        c.post("/v1/admin/peers/BY/resume")
        assert c.post("/v1/admin/peers/BY/resume").json()["error"]["code"] == "peer.not_suspended"
    wait_for("BY's message accepted", lambda: all_out(by), 60)
    assert [m.id for m in messages(kz, "in")] == [from_by]
    wait_for("the held message delivered after the resumption", lambda: all_out(kz), 60)
    assert [m.id for m in messages(by, "in")] == [held]


def test_queued_messages_are_held_while_the_peer_is_suspended(make_pair, backend) -> None:
    pair = make_pair(backend, **FAST)
    pair.start(pair.kz)  # BY down: KZ's messages queue
    kz = pair.kz
    ids = [send(kz, request_fields("BY"))["id"] for _ in range(3)]
    with op(kz) as c:
        c.post("/v1/admin/peers/BY/suspend", json={"reason": "test"})
        time.sleep(1)  # a delivery under way when the peer was suspended settles
        attempts = {i: c.get(f"/v1/admin/outbox/{i}").json()["attempts"] for i in ids}
        pair.start(pair.by)
        time.sleep(3)
        for i in ids:
            item = c.get(f"/v1/admin/outbox/{i}").json()
            assert item["state"] == "queued" and item["held"] is True
            assert item["attempts"] == attempts[i], "a held message spent an attempt"
            r = c.post(f"/v1/admin/outbox/{i}/retry")
            assert r.status_code == 409 and r.json()["error"]["code"] == "peer.suspended"
        assert messages(pair.by, "in") == []
        metrics = scrape(kz)
        assert metrics[("prolink_peer_suspended", (("peer", "BY"),))] == 1
        c.post("/v1/admin/peers/BY/resume")
    wait_for("delivered after resume", lambda: all_out(kz), 60)
    assert sorted(m.id for m in messages(pair.by, "in")) == sorted(ids)


# --- outbox ----------------------------------------------------------------------------------------


def _outbox(p, message_id: str) -> dict:
    with op(p) as c:
        return c.get(f"/v1/admin/outbox/{message_id}").json()  # type: ignore[no-any-return]


def _unless_in_flight(call: Callable[[], httpx.Response], tries: int = 100) -> httpx.Response:
    """``call``'s answer, asked again while it is "a worker is delivering it now" (a retry in progress)."""
    for _ in range(tries):
        r = call()
        if r.status_code != 409 or r.json()["error"]["code"] != "outbox.in_flight":
            return r
        time.sleep(0.05)
    raise AssertionError("the message stayed in flight")


def test_outbox_list_retry_park_requeue_never_duplicate(make_pair, backend) -> None:
    pair = make_pair(backend, **FAST)
    pair.start(pair.kz)
    kz = pair.kz
    ids = [send(kz, request_fields("BY"))["id"] for _ in range(3)]
    wait_for(
        "failed attempts",
        lambda: all(_outbox(kz, i)["attempts"] >= 1 and _outbox(kz, i)["last_error"] for i in ids),
        30,
    )
    with op(kz) as c:
        listing = c.get("/v1/admin/outbox").json()
        assert {i["message_id"] for i in listing["items"]} == set(ids)
        assert sum(listing["counts"].values()) == 3 and listing["counts"]["delivered"] == 0
        item = listing["items"][0]
        assert {"attempts", "last_error", "next_attempt_at", "state", "peer", "held"} <= set(item)
        assert item["last_error"].startswith("transport")
        for state in ("queued", "in_flight", "parked", "delivered"):
            items = c.get("/v1/admin/outbox", params={"state": state}).json()["items"]
            assert {i["state"] for i in items} <= {state}
        assert c.get("/v1/admin/outbox", params={"state": "lost"}).status_code == 422
        assert c.get("/v1/admin/outbox/nope").json()["error"]["code"] == "outbox.not_found"

        parked, queued = ids[0], ids[1]
        r = c.post(f"/v1/admin/outbox/{parked}/park", json={"reason": "проверка адресата"})
        assert r.status_code == 200 and r.json()["state"] == "parked"
        assert "проверка адресата" in r.json()["last_error"]
        assert (
            c.post(f"/v1/admin/outbox/{parked}/park", json={"reason": "x"}).json()["error"]["code"]
            == "outbox.already_parked"
        )
        assert c.post(f"/v1/admin/outbox/{parked}/retry").json()["error"]["code"] == "outbox.parked"
        # BY is down and FAST retries within a second: ask again while the worker is trying the message.
        r = _unless_in_flight(lambda: c.post(f"/v1/admin/outbox/{queued}/requeue"))
        assert r.json()["error"]["code"] == "outbox.not_parked"
        r = _unless_in_flight(lambda: c.post(f"/v1/admin/outbox/{queued}/retry"))
        assert r.status_code == 200 and r.json()["state"] in ("queued", "in_flight", "delivered")
        assert c.get("/v1/admin/outbox", params={"state": "parked"}).json()["counts"]["parked"] == 1

        pair.start(pair.by)
        wait_for(
            "the unparked delivered", lambda: all(_outbox(kz, i)["state"] == "delivered" for i in ids[1:]), 60
        )
        time.sleep(1.5)
        assert _outbox(kz, parked)["state"] == "parked", "a parked message was delivered"
        r = c.post(f"/v1/admin/outbox/{parked}/requeue")
        assert r.status_code == 200 and r.json()["attempts"] == 0
        wait_for("requeued delivered", lambda: _outbox(kz, parked)["state"] == "delivered", 60)

        for action, body in (("retry", None), ("park", {"reason": "x"}), ("requeue", None)):
            r = c.post(f"/v1/admin/outbox/{parked}/{action}", json=body)
            assert r.status_code == 409 and r.json()["error"]["code"] == "outbox.already_delivered", action
    inbound = [m.id for m in messages(pair.by, "in")]
    assert sorted(inbound) == sorted(ids), "each message arrived exactly once"


# --- users ---------------------------------------------------------------------------------------


def test_users_add_list_change_disable_and_rotate_token(shared_pair) -> None:
    p = shared_pair.kz
    with op(p) as c:
        r = c.post(
            "/v1/admin/users", json={"name": "Новый сотрудник", "role": "clerk", "clearance": "official_use"}
        )
        assert r.status_code == 201
        created = r.json()
        token, uid = created["token"], created["id"]
        listing = c.get("/v1/admin/users").json()["users"]
        assert any(u["id"] == uid for u in listing)
        assert all("token" not in u and "token_hash" not in u for u in listing)
        assert c.get("/v1/admin/users", params={"role": "operator"}).json()["users"][0]["role"] == "operator"

        def as_new(t: str) -> int:
            return httpx.get(p.api + "/v1/requests", headers={"authorization": f"Bearer {t}"}).status_code

        assert as_new(token) == 200
        r = c.patch(f"/v1/admin/users/{uid}", json={"role": "reader", "clearance": "confidential"})
        assert r.json()["role"] == "reader" and r.json()["clearance"] == "confidential"
        assert (
            c.patch(f"/v1/admin/users/{uid}", json={"role": "boss"}).json()["error"]["code"]
            == "user.bad_role"
        )
        assert (
            c.patch(f"/v1/admin/users/{uid}", json={"clearance": "top"}).json()["error"]["code"]
            == "user.bad_clearance"
        )
        assert (
            c.patch(f"/v1/admin/users/{uid}", json={"role": "signatory"}).json()["error"]["code"]
            == "user.no_signing_key"
        )
        assert (
            c.patch("/v1/admin/users/99999", json={"role": "clerk"}).json()["error"]["code"]
            == "user.not_found"
        )

        new = c.post(f"/v1/admin/users/{uid}/token").json()["token"]
        assert new != token and as_new(token) == 401 and as_new(new) == 200

        assert c.post(f"/v1/admin/users/{uid}/disable").json()["disabled"] is True
        assert as_new(new) == 403
        assert c.post(f"/v1/admin/users/{uid}/disable").json()["error"]["code"] == "user.already_disabled"
        assert c.post(f"/v1/admin/users/{uid}/enable").json()["disabled"] is False
        assert as_new(new) == 200

        me = next(u for u in listing if u["role"] == "operator")
        r = c.post(f"/v1/admin/users/{me['id']}/disable")
        assert r.status_code == 409 and r.json()["error"]["code"] == "user.last_operator"
        assert (
            c.post("/v1/admin/users", json={"name": "X", "role": "signatory"}).json()["error"]["code"]
            == "user.no_signing_key"
        )


# --- signatories and key revocation ----------------------------------------------------------------


def test_signatory_authorised_then_revoked_and_the_peer_learns_it(make_pair) -> None:
    pair = make_pair("sqlite", **FAST)
    pair.start()
    kz, by = pair.kz, pair.by
    today = datetime.now(UTC).date()
    with op(kz) as c:
        r = c.post(
            "/v1/admin/users", json={"name": "Второй подписант", "role": "clerk", "clearance": "confidential"}
        )
        uid, token = r.json()["id"], r.json()["token"]
        r = c.post(
            "/v1/admin/signatories",
            json={
                "person": "Второй подписант",
                "position": "прокурор",
                "valid_from": today.isoformat(),
                "valid_until": (today + timedelta(days=30)).isoformat(),
                "user_id": uid,
            },
        )
        assert r.status_code == 201, r.text
        key_id = r.json()["key_id"]
        assert r.json()["valid_today"] is True and r.json()["user_id"] == uid
        assert c.patch(f"/v1/admin/users/{uid}", json={"role": "signatory"}).json()["role"] == "signatory"
        bad = c.post(
            "/v1/admin/signatories",
            json={"person": "A", "position": "B", "valid_from": "2026-02-01", "valid_until": "2026-01-01"},
        )
        assert bad.status_code == 422

    signer = httpx.Client(base_url=kz.api, headers={"authorization": f"Bearer {token}"}, timeout=60)
    r = signer.post("/v1/messages", json=request_fields("BY"))
    assert r.status_code == 201, r.text
    helpers.wait_status(kz, r.json()["id"])

    with op(kz) as c:
        version = c.get("/v1/admin/keys").json()["bundle_version"]
        r = c.post(f"/v1/admin/signatories/{key_id}/revoke", json={"reason": "уволен"})
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "signatory" and r.json()["bundle_version"] == version + 1
        assert r.json()["pushed"] == {"BY": "ok"}
        assert (
            c.post(f"/v1/admin/signatories/{key_id}/revoke", json={"reason": "x"}).json()["error"]["code"]
            == "keys.already_revoked"
        )
        sig = next(s for s in c.get("/v1/admin/signatories").json()["signatories"] if s["key_id"] == key_id)
        assert sig["revoked_at"] is not None and sig["valid_today"] is False
    with op(by) as c:
        assert c.get("/v1/admin/peers/KZ").json()["bundle_version"] == version + 1
        revoked = c.get("/v1/admin/peers/KZ").json()["bundle"]["revocations"]
        assert [x["key_id"] for x in revoked] == [key_id]
    r = signer.post("/v1/messages", json=request_fields("BY"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "trust.key_revoked"
    signer.close()

    with op(kz) as c:
        in_use = c.get("/v1/admin/keys").json()["signing_key_in_use"]
        r = c.post(f"/v1/admin/keys/{in_use}/revoke", json={"reason": "x"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "keys.current_key"
        r = c.post("/v1/admin/keys/doesnotexist/revoke", json={"reason": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "keys.unknown_key"


# --- key rotation between two running nodes -------------------------------------------------------


def _sender_key(p, message_id: str) -> str:
    from service.blobs import read_blob
    from service.db import make_engine, session_scope
    from service.models import Message
    from service.settings import Settings

    engine = make_engine(Settings.load(p.data_dir).database_url)
    try:
        with session_scope(engine, readonly=True) as s:
            blob_id = s.get(Message, (message_id, "out")).blob_id
        data = b"".join(read_blob(engine, blob_id))
    finally:
        engine.dispose()
    return protocol.read_framing(data).header.sender_key_id


def _envelope_with_old_key(monkeypatch, sender, recipient, old_key_id: str) -> bytes:
    identity = load_identity(sender.data_dir)
    old = read_signing_key(sender.data_dir / "keys" / f"node-signing-{old_key_id}.key")
    identity.node_keys = protocol.NodeKeys(identity.party, old, identity.node_keys.decryption)
    monkeypatch.setattr(helpers, "load_identity", lambda *_a, **_k: identity)
    return craft_envelope(sender, recipient)


def test_key_rotation_while_messages_are_in_flight(make_pair, backend, monkeypatch) -> None:
    pair = make_pair(backend, **FAST)
    pair.start()
    kz, by = pair.kz, pair.by
    with op(kz) as c:
        before = c.get("/v1/admin/keys").json()
    old_kz = before["signing_key_in_use"]
    overlap = 4

    # Phase 1: KZ rotates while BY is down. Three envelopes are sealed with the old key before, three with
    # the new one after; BY comes back only once the overlap is over.
    pair.stop(by)
    early = [send(kz, request_fields("BY"))["id"] for _ in range(3)]
    with op(kz) as c:
        r = c.post("/v1/admin/keys/rotate", json={"overlap_seconds": overlap})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["bundle_version"] == before["bundle_version"] + 1
    assert rotated["previous_signing_key"] == old_kz and rotated["signing_key"] != old_kz
    assert rotated["pushed"]["BY"] != "ok"  # BY is down: the push is retried until BY confirms
    late = [send(kz, request_fields("BY"))["id"] for _ in range(3)]
    assert {_sender_key(kz, i) for i in early} == {old_kz}
    assert {_sender_key(kz, i) for i in late} == {rotated["signing_key"]}
    time.sleep(overlap + 1)
    pair.start(by)
    wait_for("all of KZ's messages delivered", lambda: all_out(kz), 90)

    # Phase 2: both up, both sides sending continuously; BY rotates in the middle.
    with op(by) as c:
        old_by = c.get("/v1/admin/keys").json()["signing_key_in_use"]
    sent: dict[str, list[str]] = {"KZ": [], "BY": []}
    stop = threading.Event()

    def pump(p, to: str) -> None:
        while not stop.is_set():
            sent[p.party].append(send(p, request_fields(to))["id"])
            time.sleep(0.1)

    threads = [threading.Thread(target=pump, args=(kz, "BY")), threading.Thread(target=pump, args=(by, "KZ"))]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with op(by) as c:
        r = c.post("/v1/admin/keys/rotate", json={"overlap_seconds": overlap})
    assert r.status_code == 200, r.text
    assert r.json()["pushed"]["KZ"] == "ok"
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join()
    wait_for("everything delivered both ways", lambda: all_out(kz) and all_out(by), 90)

    # None lost, none rejected, each exactly once.
    for sender, receiver in ((kz, by), (by, kz)):
        out = messages(sender, "out")
        assert all(m.receipt_status == "accepted" and m.receipt_verified for m in out)
        assert sorted(m.id for m in messages(receiver, "in")) == sorted(m.id for m in out)
    assert len(sent["BY"]) >= 5 and {_sender_key(by, i) for i in sent["BY"]} == {
        old_by,
        r.json()["signing_key"],
    }

    # Each side now holds the other's new bundle and confirmed holding ours.
    with op(by) as c:
        kz_seen = c.get("/v1/admin/peers/KZ").json()
    assert kz_seen["bundle_version"] == rotated["bundle_version"]
    with op(kz) as c:
        by_seen = c.get("/v1/admin/peers/BY").json()
        wait_for(
            "BY confirms KZ's new bundle",
            lambda: (
                c.get("/v1/admin/peers/BY").json()["our_bundle"]["acked_version"] == rotated["bundle_version"]
            ),
            60,
        )
    assert by_seen["bundle_version"] == r.json()["bundle_version"]

    # After the overlap the old keys are refused.
    time.sleep(overlap)
    stale = _envelope_with_old_key(monkeypatch, kz, by, old_kz)
    refused = deliver(kz, by, stale)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "trust.key_expired"
    stale = _envelope_with_old_key(monkeypatch, by, kz, old_by)
    refused = deliver(by, kz, stale)
    assert refused.json()["error"]["code"] == "trust.key_expired"


def test_bundle_push_refusals(make_pair) -> None:
    pair = make_pair("sqlite", **FAST)
    pair.start()
    kz, by = pair.kz, pair.by
    v1 = export_bundle(kz.data_dir)[0]

    def push(bundle: bytes) -> httpx.Response:
        with helpers.peer_client(kz, by) as c:
            return c.post("/v1/bundle", content=bundle, headers={"content-type": "application/json"})

    r = push(v1)
    assert r.status_code == 200 and r.json() == {"party": "KZ", "version": 1, "status": "unchanged"}
    with op(kz) as c:
        assert c.post("/v1/admin/keys/rotate", json={"overlap_seconds": 600}).json()["pushed"] == {"BY": "ok"}
    r = push(v1)
    assert r.status_code == 409 and r.json()["error"]["code"] == "trust.bundle_rollback"
    r = push(export_bundle(by.data_dir)[0])  # BY's own bundle, pushed by KZ: not under KZ's root
    assert r.status_code == 409 and r.json()["error"]["code"] == "trust.fingerprint_mismatch"
    signed = protocol.Signed.from_bytes(export_bundle(kz.data_dir)[0], what="bundle")
    forged = dataclasses.replace(signed, signature=bytes([signed.signature[0] ^ 1]) + signed.signature[1:])
    r = push(forged.to_bytes())
    assert r.status_code in (400, 403) and r.json()["error"]["code"].startswith("trust.")
    with op(by) as c:
        c.post("/v1/admin/peers/KZ/suspend", json={"reason": "x"})
    r = push(export_bundle(kz.data_dir)[0])
    assert r.status_code == 403 and r.json()["error"]["code"] == "peer.suspended"
    with op(by) as c:
        c.post("/v1/admin/peers/KZ/resume")
        assert c.get("/v1/admin/peers/KZ").json()["bundle_version"] == 2


def test_a_peer_added_while_the_node_runs_is_trusted_without_a_restart(make_pair) -> None:
    from service.demo import introduce, setup_party

    pair = make_pair("sqlite")
    pair.start(pair.kz)
    ru = setup_party(pair.log_dir, "RU", "Генеральная прокуратура Российской Федерации")

    def ping() -> bytes:
        ident = load_identity(ru.data_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=trusted(pair.kz).bundle.tls_ca_pem)
        ctx.load_cert_chain(ident.tls_cert_path, ident.tls_key_path)
        return _tls_answer(pair.kz.peer_port, ctx, b"GET /v1/ping HTTP/1.1\r\nhost: x\r\n\r\n")

    assert ping() == b""  # a stranger's certificate: refused in the handshake
    introduce(pair.kz, ru)  # the operator adds RU (as `prolink peer add` does) while KZ runs
    wait_for("KZ's TLS listener trusts RU's CA", lambda: ping().startswith(b"HTTP/1.1 200"), 15)
    with op(pair.kz) as c:
        assert c.post("/v1/admin/peers/RU/suspend", json={"reason": "x"}).status_code == 200
        r = c.post("/v1/admin/peers/BY/refresh")  # BY is down: its bundle cannot be fetched now
        assert r.status_code == 502 and r.json()["error"]["code"] == "peer.unreachable"
    pair.start(pair.by)
    with op(pair.kz) as c:
        r = c.post("/v1/admin/peers/BY/refresh")
        assert r.status_code == 200 and r.json() == {"party": "BY", "bundle_version": 1}


def test_cli_twins_steer_a_running_node(make_pair) -> None:
    import subprocess
    import sys

    pair = make_pair("sqlite", **FAST)
    pair.start()
    kz, by = pair.kz, pair.by

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "service", *args, "--data-dir", str(kz.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    with op(kz) as c:
        old = c.get("/v1/admin/keys").json()["signing_key_in_use"]
    printed = cli("keys", "rotate", "--overlap", "1h")
    assert "Bundle version 2" in printed
    with op(kz) as c:  # the running node loads the new keys and pushes the bundle to BY by itself
        wait_for(
            "KZ signs with its new key",
            lambda: c.get("/v1/admin/keys").json()["signing_key_in_use"] != old,
            30,
        )
    with op(by) as c:
        wait_for(
            "BY holds KZ's new bundle", lambda: c.get("/v1/admin/peers/KZ").json()["bundle_version"] == 2, 30
        )
    sent = send(kz, request_fields("BY"))
    helpers.wait_status(kz, sent["id"])
    assert _sender_key(kz, sent["id"]) != old

    assert "suspended" in cli("peer", "suspend", "BY", "--reason", "техническое окно")
    held = send(kz, request_fields("BY"))["id"]  # queued, and held by the running node
    time.sleep(2.5)
    with op(kz) as c:
        item = c.get(f"/v1/admin/outbox/{held}").json()
        assert item["state"] == "queued" and item["attempts"] == 0 and item["held"] is True
    assert "resumed" in cli("peer", "resume", "BY")
    assert '"status": "active"' in cli("peer", "show", "BY")
    helpers.wait_status(kz, held)  # delivered once BY is resumed

    listing = cli("user", "list")
    clerk_id = next(line.split("\t")[0] for line in listing.splitlines() if "\tclerk\t" in line)
    assert "Token (shown once): plk_" in cli("user", "rotate-token", clerk_id)
    with kz.client("clerk") as c:
        assert c.get("/v1/requests").status_code == 401  # the old token stopped working
    assert "role reader" in cli("user", "role", clerk_id, "reader")
    assert "disabled" in cli("user", "disable", clerk_id)
    assert "plk_" not in cli("user", "list")

    assert "delivered=" in cli("outbox", "list")
    assert sent["id"] in cli("outbox", "list", "--state", "delivered")
    out = subprocess.run(
        [sys.executable, "-m", "service", "outbox", "retry", sent["id"], "--data-dir", str(kz.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "outbox.already_delivered" in out.stderr


def test_rotation_refusals(shared_pair) -> None:
    p = shared_pair.kz
    with op(p) as c:
        r = c.post("/v1/admin/keys/rotate", json={"overlap_seconds": -1})
        assert r.status_code == 422
        keys = c.get("/v1/admin/keys").json()
    assert keys["root_key"] == "not encrypted" and keys["fingerprint"] == export_bundle(p.data_dir)[1]
    assert {k["key_id"] for k in keys["signing_keys"] if k["in_use"]} == {keys["signing_key_in_use"]}


# --- originals and the agreement -------------------------------------------------------------------


def test_originals_owed_by_post_are_listed_on_both_sides(shared_pair) -> None:
    kz, by = shared_pair.kz, shared_pair.by
    sent = send(kz, request_fields("BY", urgent=True))
    helpers.wait_status(kz, sent["id"])
    with op(kz) as c:
        ours = c.get("/v1/admin/originals").json()
    with op(by) as c:
        theirs = c.get("/v1/admin/originals").json()
        assert c.get("/v1/admin/originals", params={"overdue": True}).json()["originals"] == []
    mine = next(o for o in ours["originals"] if o["request_id"] == sent["id"])
    other = next(o for o in theirs["originals"] if o["request_id"] == sent["id"])
    assert mine["side"] == "we_owe" and other["side"] == "owed_to_us"
    assert mine["due_on"] == other["due_on"] and mine["overdue"] is False and mine["days_left"] > 0
    assert ours["summary"]["we_owe"] >= 1 and theirs["summary"]["owed_to_us"] >= 1


def test_agreement_configuration_is_versioned_never_edited(shared_pair) -> None:
    p = shared_pair.by
    with op(p) as c:
        state = c.get("/v1/admin/agreement").json()
        assert state["state"] == "in_force" and state["signed_on"] == "2014-07-21"
        assert state["configuration"]["current"]["version"] == 1
        assert state["configuration"]["current"]["parameters"]["termination_notice_days"] == 60
        start = (date.today() + timedelta(days=10)).isoformat()
        r = c.post(
            "/v1/admin/agreement/versions",
            json={
                "effective_from": start,
                "reference": "Протокол о внесении изменений № 1",
                "changes": {"originals_due_days": 20, "directions": [*protocol.DIRECTIONS, "cybercrime_2"]},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["version"] == 2 and r.json()["parameters"]["originals_due_days"] == 20
        state = c.get("/v1/admin/agreement").json()
        assert state["configuration"]["current"]["version"] == 1  # not in force yet
        assert [v["version"] for v in state["configuration"]["pending"]] == [2]
        assert [v["version"] for v in state["configuration"]["history"]] == [1, 2]
        r = c.post(
            "/v1/admin/agreement/versions",
            json={"effective_from": "2020-01-01", "reference": "x", "changes": {"originals_due_days": 10}},
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "agreement.version_out_of_order"
        r = c.post(
            "/v1/admin/agreement/versions",
            json={"effective_from": start, "reference": "x", "changes": {"colour": "blue"}},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "agreement.unknown_parameter"
        r = c.post(
            "/v1/admin/agreement/versions",
            json={"effective_from": start, "reference": "x", "changes": {"originals_due_days": 20}},
        )
        assert r.json()["error"]["code"] == "agreement.no_change"
        for method in ("PUT", "PATCH", "DELETE"):
            assert c.request(method, "/v1/admin/agreement/versions").status_code == 405
        c.post(
            "/v1/admin/agreement/termination",
            json={"received_on": date.today().isoformat(), "given_by": "KZ"},
        )
        state = c.get("/v1/admin/agreement").json()
        assert state["state"] == "termination_pending"
        assert state["termination"]["ends_on"] == (date.today() + timedelta(days=60)).isoformat()


# --- metrics ---------------------------------------------------------------------------------------


def scrape(p) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with op(p) as c:
        text = c.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_move_with_an_exchange(make_pair) -> None:
    pair = make_pair("sqlite", **FAST)
    pair.start(pair.kz)
    kz, by = pair.kz, pair.by
    m0 = scrape(kz)
    assert m0[("prolink_outbox_messages", (("state", "queued"),))] == 0
    assert m0.get(("prolink_delivery_latency_seconds_count", (("peer", "BY"),)), 0) == 0

    ids = [send(kz, request_fields("BY"))["id"] for _ in range(3)]
    wait_for(
        "retries counted",
        lambda: scrape(kz).get(("prolink_delivery_retries_total", (("peer", "BY"),)), 0) >= 3,
        30,
    )
    m1 = scrape(kz)
    waiting = sum(m1[("prolink_outbox_messages", (("state", s),))] for s in ("queued", "in_flight"))
    assert waiting == 3 and m1[("prolink_outbox_queue_depth", (("peer", "BY"),))] == 3
    assert m1[("prolink_outbox_oldest_queued_age_seconds", ())] > 0

    with op(kz) as c:
        c.post(f"/v1/admin/outbox/{ids[0]}/park", json={"reason": "x"})
    assert scrape(kz)[("prolink_outbox_parked", ())] == 1

    pair.start(by)
    wait_for("two delivered", lambda: sum(m.status == "delivered" for m in messages(kz, "out")) == 2, 60)
    m2 = scrape(kz)
    assert m2[("prolink_outbox_messages", (("state", "delivered"),))] == 2
    assert m2[("prolink_messages", (("direction", "out"), ("status", "delivered")))] == 2
    assert m2[("prolink_delivery_latency_seconds_count", (("peer", "BY"),))] == 2
    assert m2[("prolink_delivery_latency_seconds_sum", (("peer", "BY"),))] > 0
    assert m2[("prolink_outbox_queue_depth", (("peer", "BY"),))] == 0
    assert (
        m2[("prolink_delivery_retries_total", (("peer", "BY"),))]
        >= m1[("prolink_delivery_retries_total", (("peer", "BY"),))]
    )
    assert scrape(by)[("prolink_messages", (("direction", "in"), ("status", "received")))] == 2

    # A forged delivery is refused, and counted by its code on the receiving side.
    key = ("prolink_rejected_deliveries_total", (("code", "envelope.bad_signature"), ("direction", "in")))
    before = scrape(by).get(key, 0)
    forged = bytearray(craft_envelope(kz, by))
    forged[-1] ^= 1
    assert deliver(kz, by, bytes(forged)).status_code == 401
    assert scrape(by)[key] == before + 1

    with op(kz) as c:
        c.post(f"/v1/admin/outbox/{ids[0]}/requeue")
    wait_for("the last delivered", lambda: all_out(kz), 60)
    m3 = scrape(kz)
    assert m3[("prolink_outbox_parked", ())] == 0
    assert m3[("prolink_delivery_latency_seconds_count", (("peer", "BY"),))] == 3
    wait_for(
        "BY confirms holding KZ's bundle",
        lambda: scrape(kz)[("prolink_peer_has_our_bundle", (("peer", "BY"),))] == 1,
        30,
    )
    assert m3[("prolink_requests_overdue", (("our_role", "requesting"),))] == 0
    assert ("prolink_originals_overdue", (("owed_by", "us"),)) in m3
    assert m3[("prolink_node_signing_key_expires_in_seconds", ())] > 0

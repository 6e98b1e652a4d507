"""Delivery under failure: peer down, and kill -9 of both nodes mid-exchange (issue: two real nodes)."""

from __future__ import annotations

import time

import pytest

from service.demo import introduce, setup_party, start, stop, wait_ready
from tests.integration.conftest import NAMES
from tests.integration.helpers import messages, request_fields, send, wait_for, wait_status

pytestmark = pytest.mark.integration

FAST_RETRY = {
    "delivery_backoff_base_seconds": 0.2,
    "delivery_backoff_max_seconds": 1.0,
    "delivery_lease_seconds": 5.0,
}


def test_messages_queue_while_the_peer_is_down_and_are_delivered_after(make_pair, backend) -> None:
    pair = make_pair(backend, **FAST_RETRY)
    pair.start(pair.kz)
    ids = [send(pair.kz, request_fields("BY"))["id"] for _ in range(3)]
    time.sleep(1.5)
    out = {m.id: m for m in messages(pair.kz, "out")}
    assert all(out[i].status in ("queued", "in_flight") for i in ids)
    pair.start(pair.by)
    wait_for("all delivered", lambda: all(m.status == "delivered" for m in messages(pair.kz, "out")), 60)
    assert sorted(m.id for m in messages(pair.by, "in")) == sorted(ids)


def test_crash_of_both_nodes_loses_and_duplicates_nothing(make_pair, backend) -> None:
    # One envelope per delivery, one delivery at a time: the receiver is still receiving when it is
    # killed, however fast the machine (in batches of 64, all 200 arrived before the kill).
    pair = make_pair(backend, **FAST_RETRY, batch_max_items=1, delivery_concurrency=1)
    pair.start(pair.kz)
    ids = [send(pair.kz, request_fields("BY"))["id"] for _ in range(200)]
    pair.stop(pair.kz, kill=True)  # sender dies with 200 queued

    pair.start(pair.by)
    pair.start(pair.kz)
    wait_for("some deliveries", lambda: len(messages(pair.by, "in")) >= 20, 120)
    pair.stop(pair.by, kill=True)  # receiver dies while receiving
    received_before_crash = len(messages(pair.by, "in"))
    assert received_before_crash < 200, "the receiver should have been killed mid-stream"
    pair.start(pair.by)

    def all_delivered() -> bool:
        return all(m.status == "delivered" for m in messages(pair.kz, "out"))

    wait_for("every message delivered", all_delivered, 240)
    inbound = messages(pair.by, "in")
    outbound = {m.id: m for m in messages(pair.kz, "out")}
    assert sorted(m.id for m in inbound) == sorted(ids)  # exactly once: each id once, none missing
    for m in inbound:
        assert m.envelope_sha256 == outbound[m.id].envelope_sha256
    assert all(m.receipt is not None and m.receipt_verified for m in outbound.values())


def test_a_graceful_stop_is_not_held_up_by_the_peers_idle_connection(make_pair) -> None:
    """After a delivery the sender's worker keeps its TLS connection to the receiver open and idle; stopping
    the receiver must not wait for it (it did, 30 s: its TLS close waited for a close_notify)."""
    pair = make_pair("sqlite")
    pair.start()
    wait_status(pair.kz, send(pair.kz, request_fields("BY"))["id"])
    process = pair.by.process
    assert process is not None
    started = time.monotonic()
    process.terminate()
    assert process.wait(20) == 0  # stopped by itself, not killed
    assert time.monotonic() - started < 10
    pair.by.process = None


def test_a_node_started_before_its_first_peer_trusts_the_peer_once_added(tmp_path) -> None:
    """``prolink serve`` runs with no peer yet (its peer port accepts no client); ``peer add`` while it
    runs is enough: the key sync trusts the new peer's TLS CA, and the peer's deliveries are taken."""
    kz = setup_party(tmp_path, "KZ", NAMES["KZ"], **FAST_RETRY)
    by = setup_party(tmp_path, "BY", NAMES["BY"], **FAST_RETRY)
    try:
        start(by, tmp_path)
        wait_ready(by)
        with by.client("operator") as c:
            assert c.get("/readyz").json()["status"] == "ready"
        introduce(by, kz)  # as ``prolink peer add`` does, while BY runs
        introduce(kz, by)
        start(kz, tmp_path)
        wait_ready(kz)
        message_id = send(kz, request_fields("BY"))["id"]
        wait_status(kz, message_id)
        assert [m.id for m in messages(by, "in")] == [message_id]
    finally:
        stop(kz)
        stop(by)

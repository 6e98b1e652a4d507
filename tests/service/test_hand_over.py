"""What the send path hands to this process's delivery worker (``Node._store_sends``,
``DeliveryWorker.hand_over``).

A message that opens its thread, sent to an active peer without attachments, is
stored already claimed by the local worker (first attempt, leased) and handed to
it in memory with its envelope: no claim and no read stand between the commit
and the request to the peer. Everything else is queued for the claim, as before.
Whatever the worker was handed and never sent goes back to the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from bench.bench_exchange import russian_document
from service import demo, outbox
from service.admin import set_peer_suspended
from service.blobs import small_blobs
from service.db import session_scope
from service.models import Message, Outbox, User
from service.node import Node
from service.server import build_node
from service.user_api import compose_for
from service.worker import DeliveryWorker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kz(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    urls: dict[str, str | None] = {"KZ": None, "BY": None}
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_database")
        urls = {"KZ": make(), "BY": make()}
    kz_party = demo.setup_party(tmp_path, "KZ", "Kaz", urls["KZ"])
    by_party = demo.setup_party(tmp_path, "BY", "Bel", urls["BY"])
    demo.introduce(kz_party, by_party)
    node = build_node(kz_party.data_dir)
    yield node
    node.engine.dispose()


@pytest.fixture
def worker(kz: Node) -> Iterator[DeliveryWorker]:
    """KZ's worker, attached as ``prolink serve`` attaches it, but not started: the tests drive it."""
    w = DeliveryWorker(kz)
    kz.worker = w
    yield w
    kz.worker = None
    w._pool.shutdown(wait=True)


def send(node: Node, fields: dict[str, Any]) -> str:
    with session_scope(node.engine, readonly=True) as s:
        key_id = s.execute(select(User.signatory_key_id).where(
            User.signatory_key_id.is_not(None))).scalar_one()  # type: ignore[union-attr]
    return node.send(compose_for(node, fields, []), node.signatory(key_id), [], actor="user:test").id


def rows(node: Node, message_id: str) -> tuple[Any, Any]:
    with session_scope(node.engine, readonly=True) as s:
        message = s.get(Message, (message_id, "out"))
        row = s.execute(select(Outbox).where(Outbox.message_id == message_id)).scalar_one()
        return message, row


def handed(worker: DeliveryWorker) -> list[outbox.Claim]:
    return [c for claims in worker._handed.values() for c in claims]


def test_a_new_request_is_stored_claimed_by_the_local_worker_and_handed_to_it_with_its_envelope(
        kz: Node, worker: DeliveryWorker) -> None:
    worker._claim_wanted = False
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, row.claimed_by) == ("in_flight", 1, worker.worker_id)
    assert message.status == "in_flight"
    lease = row.claim_expires_at.replace(tzinfo=row.claim_expires_at.tzinfo or UTC) - kz.clock()
    assert timedelta(0) < lease <= timedelta(seconds=kz.settings.delivery_lease_seconds)

    [claim] = handed(worker)
    assert (claim.outbox_id, claim.message_id, claim.peer, claim.attempts) == (row.id, mid, "BY", 1)
    assert claim.worker_id == worker.worker_id and claim.blob_id == message.blob_id
    assert claim.envelope == small_blobs(kz.engine, [message.blob_id])[0]  # the stored bytes, not a copy's
    assert claim.envelope_size == message.envelope_size and claim.envelope_sha256 == message.envelope_sha256
    assert outbox.claim_due(kz.engine, "another-worker", kz.clock(), 10, 60).claims == []  # leased: not due
    assert worker._wake.is_set() and not worker._claim_wanted  # woken to send it, with no claim


def test_a_later_message_of_the_thread_is_queued_behind_the_handed_request_and_held_by_the_claim(
        kz: Node, worker: DeliveryWorker) -> None:
    rid = send(kz, {**russian_document("BY"), "urgent": True})
    worker._claim_wanted = False
    follow = send(kz, {"kind": "original_dispatched", "request_id": rid, "thread_id": rid,
                       "confidentiality": "confidential", "dispatched_on": date.today().isoformat(),
                       "tracking_number": "RR123456789KZ"})
    message, row = rows(kz, follow)
    assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")
    assert [c.message_id for c in handed(worker)] == [rid]
    assert worker._claim_wanted  # the queued one asked for a claim
    result = outbox.claim_due(kz.engine, worker.worker_id, kz.clock(), 10, 60)
    assert result.claims == [] and result.more  # held until the request (in flight) is delivered


def test_a_suspended_peers_message_is_queued_and_held_not_handed_over(kz: Node,
                                                                     worker: DeliveryWorker) -> None:
    set_peer_suspended(kz, "BY", True, actor="user:test", reason="test")
    kz.peer("BY", active_only=False)  # (the cache now knows BY is suspended)
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    assert handed(worker) == []


def test_without_a_worker_in_the_process_a_send_is_queued_for_the_claim(kz: Node) -> None:
    assert kz.worker is None  # (the CLI, a test, a node that is stopping)
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    [claim] = outbox.claim_due(kz.engine, "w", kz.clock(), 10, 60).claims
    assert claim.message_id == mid and claim.envelope is None


def test_a_stopping_worker_gives_back_what_it_was_handed_and_never_sent(kz: Node,
                                                                      worker: DeliveryWorker) -> None:
    mid = send(kz, russian_document("BY"))
    worker.close()
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")
    [claim] = outbox.claim_due(kz.engine, "next-start", kz.clock(), 10, 60).claims  # due at once, not after
    assert (claim.message_id, claim.attempts) == (mid, 1)                          # the lease


def test_a_handed_over_envelope_that_waited_half_its_lease_is_given_back_not_sent(
        kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    mid = send(kz, russian_document("BY"))
    later = kz.clock() + timedelta(seconds=kz.settings.delivery_lease_seconds * 0.6)
    monkeypatch.setattr(kz, "clock", lambda: later)
    assert worker._take_handed({}, [], []) == []
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    assert handed(worker) == [] and worker._claim_wanted  # claimed again at once, by the claim


def test_due_rows_go_first_and_what_was_handed_over_fills_the_batch_to_its_peer(
        kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    first = send(kz, russian_document("BY"))
    second = send(kz, russian_document("BY"))
    due = SimpleNamespace(peer="BY", envelope_size=4096, message_id="due-row")
    monkeypatch.setattr(outbox, "claim_due", lambda *a, **k: outbox.ClaimResult([due], False))  # type: ignore[list-item]
    monkeypatch.setattr(kz.settings, "batch_max_items", 2)
    started: list[list[str]] = []
    monkeypatch.setattr(worker, "deliver_group", lambda group: started.append([c.message_id for c in group]))
    worker._claim_wanted = True

    assert worker._dispatch() == 2  # one batch to BY in flight: the due row and the oldest handed over
    worker._pool.shutdown(wait=True)
    assert started == [["due-row", first]]
    assert [c.message_id for c in handed(worker)] == [second]  # waits for the next batch to BY

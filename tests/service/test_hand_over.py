"""What the send path hands to this process's delivery worker (``Node._store_group``,
``DeliveryWorker.hand_over``).

A message that opens its thread, sent to an active peer without attachments, is
stored already claimed by the local worker (first attempt, leased) and handed to
it in memory with its envelope: no claim and no read stand between the commit
and the request to the peer. Everything else is queued for the claim, as before.
Whatever the worker was handed and never sent goes back to the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from bench.bench_exchange import russian_document
from service import node as node_module
from service import outbox
from service import worker as worker_module
from service.admin import set_peer_suspended
from service.blobs import small_blobs
from service.compose import compose
from service.db import session_scope
from service.models import Message, Outbox
from service.node import Node, new_message_id
from service.user_api import compose_for
from service.worker import DeliveryWorker
from tests.service.conftest import signatory_of


@pytest.fixture
def kz(node_pair: tuple[Node, Node]) -> Node:
    return node_pair[0]


@pytest.fixture
def worker(kz: Node) -> Iterator[DeliveryWorker]:
    """KZ's worker, attached as ``prolink serve`` attaches it, but not started: the tests drive it."""
    w = DeliveryWorker(kz)
    kz.worker = w
    yield w
    kz.worker = None
    w._pool.shutdown(wait=True)


def send(node: Node, fields: dict[str, Any]) -> str:
    return node.send(compose_for(node, fields, []), signatory_of(node), [], actor="user:test").id


def rows(node: Node, message_id: str) -> tuple[Any, Any]:
    with session_scope(node.engine, readonly=True) as s:
        message = s.get(Message, (message_id, "out"))
        row = s.execute(select(Outbox).where(Outbox.message_id == message_id)).scalar_one()
        return message, row


def handed(worker: DeliveryWorker) -> list[outbox.Claim]:
    return [c for claims in worker._handed.values() for c in claims]


def test_a_new_request_is_stored_claimed_by_the_local_worker_and_handed_to_it_with_its_envelope(
    kz: Node, worker: DeliveryWorker
) -> None:
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


def test_a_send_whose_peer_entry_ran_out_between_its_seal_and_its_commit_is_still_handed_over(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer cache's two seconds may end while a sealed message waits for its group's commit: the
    hand-over takes the peer as last known (the worker checks it before it sends), not the queue."""
    seal = kz._seal

    def seal_then_age(*args: Any, **kwargs: Any) -> Any:
        sealed = seal(*args, **kwargs)
        at, version, status, trusted = kz._peers["BY"]
        kz._peers["BY"] = (at - node_module.PEER_CACHE_SECONDS - 1, version, status, trusted)
        return sealed

    monkeypatch.setattr(kz, "_seal", seal_then_age)
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.claimed_by, message.status) == ("in_flight", worker.worker_id, "in_flight")
    assert [c.message_id for c in handed(worker)] == [mid]


def test_a_later_message_of_the_thread_is_queued_behind_the_handed_request_and_held_by_the_claim(
    kz: Node, worker: DeliveryWorker
) -> None:
    rid = send(kz, {**russian_document("BY"), "urgent": True})
    worker._claim_wanted = False
    follow = send(
        kz,
        {
            "kind": "original_dispatched",
            "request_id": rid,
            "thread_id": rid,
            "confidentiality": "confidential",
            "dispatched_on": date.today().isoformat(),
            "tracking_number": "RR123456789KZ",
        },
    )
    message, row = rows(kz, follow)
    assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")
    assert [c.message_id for c in handed(worker)] == [rid]
    assert worker._claim_wanted  # the queued one asked for a claim
    result = outbox.claim_due(kz.engine, worker.worker_id, kz.clock(), 10, 60)
    assert result.claims == [] and result.more  # held until the request (in flight) is delivered


def test_a_suspended_peers_message_is_queued_and_held_not_handed_over(
    kz: Node, worker: DeliveryWorker
) -> None:
    set_peer_suspended(kz, "BY", True, actor="user:test", reason="test")
    kz.peer("BY", active_only=False)  # (the cache now knows BY is suspended)
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    assert handed(worker) == []
    assert outbox.claim_due(kz.engine, "w", kz.clock(), 10, 60).claims == []  # held while BY is suspended


def test_a_message_handed_over_before_its_peer_was_suspended_is_held_not_sent(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = send(kz, russian_document("BY")), send(kz, russian_document("BY"))
    set_peer_suspended(kz, "BY", True, actor="user:test", reason="test")  # (by an operator, elsewhere)
    monkeypatch.setattr(worker, "_client", lambda party: pytest.fail("nothing may be sent to BY"))
    assert worker.deliver_group(handed(worker)) == ["held", "held"]
    for mid in (first, second):
        message, row = rows(kz, mid)
        assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")


def test_an_opener_with_a_later_message_of_its_thread_in_the_same_group_is_queued_in_order(
    kz: Node, worker: DeliveryWorker
) -> None:
    signatory, at = signatory_of(kz), kz.clock()
    request = compose(
        {**russian_document("BY"), "urgent": True},
        message_id=new_message_id(),
        sender_party="KZ",
        now=at,
        attachments=[],
        answered=None,
    )
    follow = compose(
        {
            "kind": "original_dispatched",
            "request_id": request.id,
            "thread_id": request.id,
            "recipient_party": "BY",
            "confidentiality": "confidential",
            "dispatched_on": at.date().isoformat(),
            "tracking_number": "RR123456789KZ",
        },
        message_id=new_message_id(),
        sender_party="KZ",
        now=at,
        attachments=[],
        answered=None,
    )
    peer = kz.peer("BY")
    kz._store_sends([kz._seal(doc, signatory, [], "user:test", peer) for doc in (request, follow)])
    assert handed(worker) == []  # the claim takes the request first, the later one once it is delivered
    assert [rows(kz, m)[1].state for m in (request.id, follow.id)] == ["queued", "queued"]
    assert rows(kz, request.id)[1].id < rows(kz, follow.id)[1].id
    [claim] = outbox.claim_due(kz.engine, worker.worker_id, kz.clock(), 10, 60).claims
    assert claim.message_id == request.id


def test_no_more_than_a_batch_waits_in_memory_for_a_peer_the_rest_is_queued(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kz.settings, "batch_max_items", 2)
    ids = [send(kz, russian_document("BY")) for _ in range(3)]
    assert [c.message_id for c in handed(worker)] == ids[:2]
    assert [rows(kz, m)[1].state for m in ids] == ["in_flight", "in_flight", "queued"]


def test_without_a_worker_in_the_process_a_send_is_queued_for_the_claim(kz: Node) -> None:
    assert kz.worker is None  # (the CLI, a test, a node that is stopping)
    mid = send(kz, russian_document("BY"))
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    [claim] = outbox.claim_due(kz.engine, "w", kz.clock(), 10, 60).claims
    assert claim.message_id == mid and claim.envelope is None


def test_a_stopping_worker_gives_back_what_it_was_handed_and_never_sent(
    kz: Node, worker: DeliveryWorker
) -> None:
    mid = send(kz, russian_document("BY"))
    worker.close()
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")
    [claim] = outbox.claim_due(kz.engine, "next-start", kz.clock(), 10, 60).claims  # due at once, not after
    assert (claim.message_id, claim.attempts) == (mid, 1)  # the lease


def test_what_is_handed_over_after_the_worker_stopped_goes_back_to_the_queue_at_once(
    kz: Node, worker: DeliveryWorker
) -> None:
    mid = send(kz, russian_document("BY"))
    claims = worker._handed.pop("BY")  # as if this send had looked at ``Node.worker`` just before the stop
    worker.close()
    assert not worker.has_room("BY")  # (a send from now on is queued)
    worker.hand_over(claims)  # ...and committed after it
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, row.claimed_by, message.status) == ("queued", 0, None, "queued")
    assert handed(worker) == []


def test_a_handed_over_envelope_that_waited_half_its_lease_is_given_back_not_sent_even_to_a_busy_peer(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = send(kz, russian_document("BY"))
    later = kz.clock() + timedelta(seconds=kz.settings.delivery_lease_seconds * 0.6)
    monkeypatch.setattr(kz, "clock", lambda: later)
    worker._small_in_flight["BY"] = kz.settings.delivery_batches_per_peer  # BY is busy all that time
    went_back: list[bool] = []
    look = worker._give_back_stale
    monkeypatch.setattr(worker, "_give_back_stale", lambda: went_back.append(look()) or went_back[-1])
    assert worker._dispatch() == 0  # nothing goes to BY while it is busy...
    assert went_back == [True]  # ...but the round gave the stale hand-over back first
    message, row = rows(kz, mid)
    assert (row.state, row.attempts, message.status) == ("queued", 0, "queued")
    assert handed(worker) == []


def test_a_stale_handed_over_copy_never_gives_back_the_same_workers_later_claim(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = send(kz, russian_document("BY"))
    later = kz.clock() + timedelta(seconds=kz.settings.delivery_lease_seconds + 1)  # the peer hung that long
    [again] = outbox.claim_due(kz.engine, worker.worker_id, later, 10, 60).claims  # taken again, attempt 2
    monkeypatch.setattr(kz, "clock", lambda: later)
    assert worker._give_back_stale()  # the old copy in memory is dropped...
    message, row = rows(kz, mid)  # ...and the row stays with the claim being delivered now
    assert (row.state, row.attempts, row.claimed_by, message.status) == (
        "in_flight",
        2,
        worker.worker_id,
        "in_flight",
    )
    assert again.attempts == 2


def test_due_rows_go_first_and_what_was_handed_over_fills_the_batch_to_its_peer(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = send(kz, russian_document("BY"))
    second = send(kz, russian_document("BY"))
    due = SimpleNamespace(peer="BY", envelope_size=4096, message_id="due-row", envelope=None)
    monkeypatch.setattr(outbox, "claim_due", lambda *a, **k: outbox.ClaimResult([due], False))  # type: ignore[list-item]
    monkeypatch.setattr(kz.settings, "batch_max_items", 2)
    started: list[list[str]] = []
    monkeypatch.setattr(worker, "deliver_group", lambda group: started.append([c.message_id for c in group]))
    worker._claim_wanted = True

    assert worker._dispatch() == 2  # one batch to BY in flight: the due row and the oldest handed over
    worker._pool.shutdown(wait=True)
    assert started == [["due-row", first], [second]]  # the other waited for the next batch to BY
    assert handed(worker) == []


def _deliveries_of(
    worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch, meanwhile: Any = None
) -> list[tuple[str, list[str]]]:
    """(thread, message ids) of each delivery the worker starts; ``meanwhile`` runs during the first."""
    started: list[tuple[str, list[str]]] = []

    def deliver(group: list[outbox.Claim]) -> list[str]:
        started.append((threading.current_thread().name, [c.message_id for c in group]))
        if len(started) == 1 and meanwhile is not None:
            meanwhile()
        return ["delivered"] * len(group)

    monkeypatch.setattr(worker, "deliver_group", deliver)
    return started


def test_what_is_handed_over_while_a_batch_is_in_flight_goes_next_from_the_same_thread(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hand-over to the dispatcher and on to another thread between one batch to a peer and the next."""
    first = send(kz, russian_document("BY"))
    later: list[str] = []
    started = _deliveries_of(
        worker, monkeypatch, lambda: later.extend(send(kz, russian_document("BY")) for _ in range(3))
    )  # sent while the first batch is in flight

    assert worker._dispatch() == 1
    worker._pool.shutdown(wait=True)
    assert [ids for _, ids in started] == [[first], later]
    assert started[0][0] == started[1][0]  # one thread, which kept its slot
    assert handed(worker) == [] and worker._small_in_flight["BY"] == 0


def test_the_next_batch_is_left_to_the_dispatcher_when_it_has_due_rows_to_claim_or_must_look(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(kz, russian_document("BY"))
    woken: list[bool] = []
    monkeypatch.setattr(worker, "wake", lambda: woken.append(True))
    for reason in (
        "due rows left behind",
        "a claim asked for",
        "the claim interval gone by",
        "claimed rows waiting for a thread",
    ):

        def meanwhile(reason: str = reason) -> None:
            send(kz, russian_document("BY"))
            if reason == "due rows left behind":
                worker._again_after_delivery = True
            elif reason == "a claim asked for":
                worker._claim_wanted = True
            elif reason == "the claim interval gone by":
                worker._claimed_at -= worker.interval()
            else:
                worker._waiting_for_thread = True

        started = _deliveries_of(worker, monkeypatch, meanwhile)
        worker._claim_wanted, worker._again_after_delivery = True, False
        assert worker._dispatch() >= 1, reason
        worker._pool.shutdown(wait=True)
        worker._pool = worker_module.ThreadPoolExecutor(max_workers=2)
        assert len(started) == 1, reason  # the one handed over meanwhile waits for the dispatcher's round
        assert len(handed(worker)) == 1, reason


def test_a_handed_over_envelope_with_half_its_lease_gone_is_not_sent_on_by_the_delivery_thread(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(kz, russian_document("BY"))
    now = kz.clock()

    def meanwhile() -> None:
        send(kz, russian_document("BY"))
        half_gone = now + timedelta(seconds=kz.settings.delivery_lease_seconds * 0.6)
        monkeypatch.setattr(kz, "clock", lambda: half_gone)

    started = _deliveries_of(worker, monkeypatch, meanwhile)
    assert worker._dispatch() == 1
    worker._pool.shutdown(wait=True)
    assert len(started) == 1 and len(handed(worker)) == 1  # the dispatcher's to give back


def test_a_batch_carries_handed_over_envelopes_from_memory_and_reads_only_the_others(
    kz: Node, worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    kz.worker = None
    queued = send(kz, russian_document("BY"))
    kz.worker = worker
    send(kz, russian_document("BY"))
    [claimed] = outbox.claim_due(kz.engine, worker.worker_id, kz.clock(), 10, 60).claims
    [passed] = handed(worker)
    stored = small_blobs(kz.engine, [claimed.blob_id, passed.blob_id])
    reads: list[list[int]] = []
    real = worker_module.small_blobs

    def counted(engine: Any, ids: list[int], **kw: Any) -> list[bytes]:
        reads.append(list(ids))
        return real(engine, ids, **kw)

    monkeypatch.setattr(worker_module, "small_blobs", counted)
    assert worker._envelopes([passed, claimed]) == [stored[1], stored[0]]
    assert reads == [[claimed.blob_id]]  # the handed-over one came from memory
    assert claimed.message_id == queued

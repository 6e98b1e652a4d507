"""Group commit: sends that arrive together share one transaction, and never one another's failure."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select

from bench.bench_exchange import russian_document
from protocol import Document, LifecycleError
from service import audit, group_commit, outbox
from service.blobs import small_blobs
from service.compose import compose
from service.db import session_scope
from service.group_commit import GroupCommit
from service.models import Event, Message, Outbox
from service.node import Node, Receipts
from service.worker import DeliveryWorker
from tests.service.conftest import signatory_of


class Recorder:
    """A ``store_group`` that records its groups and refuses items named ``bad``."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.groups.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [f"stored {item}" for item in items]


def submit_together(
    group: GroupCommit[Any, Any], items: list[Any], submit: Callable[[Any], Any] | None = None
) -> list[Any]:
    """Submit ``items`` from one thread each while a group is being stored, so they queue together;
    each thread's result, or the exception it raised."""
    submit = submit or group.submit

    def one(item: Any) -> Any:
        try:
            return submit(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        with group._leader:  # as if a group were being stored: the callers queue behind it
            futures = [pool.submit(one, item) for item in items]
            deadline = time.monotonic() + 10
            while len(group._queue) < len(items) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(group._queue) == len(items)
        return [f.result(10) for f in futures]


def test_items_that_arrive_together_are_stored_as_one_group() -> None:
    store = Recorder()
    group = GroupCommit(store)
    assert group.submit("alone") == "stored alone"
    results = submit_together(group, ["a", "b", "c", "d"])
    assert results == ["stored a", "stored b", "stored c", "stored d"]
    assert store.groups == [["alone"], ["a", "b", "c", "d"]]


def test_a_failing_group_is_stored_again_item_by_item_and_only_the_bad_caller_gets_the_error() -> None:
    store = Recorder()
    group = GroupCommit(store)
    results = submit_together(group, ["a", "bad", "c"])
    assert results[0] == "stored a" and results[2] == "stored c"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad item"
    assert store.groups == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_a_group_holds_at_most_max_items_and_the_rest_follow() -> None:
    store = Recorder()
    group = GroupCommit(store, max_items=2)
    assert submit_together(group, ["a", "b", "c", "d", "e"]) == [f"stored {x}" for x in "abcde"]
    assert all(len(g) <= 2 for g in store.groups)
    assert sorted(x for g in store.groups for x in g) == list("abcde")


def test_an_interrupted_group_never_leaves_a_caller_waiting() -> None:
    def interrupted(items: Sequence[str]) -> list[str]:
        raise KeyboardInterrupt

    group = GroupCommit(interrupted)
    results: list[BaseException] = []

    def call(item: str) -> None:
        try:
            group.submit(item)
        except BaseException as exc:
            results.append(exc)

    with group._leader:
        threads = [threading.Thread(target=call, args=(x,)) for x in "ab"]
        for t in threads:
            t.start()
        while len(group._queue) < 2:
            time.sleep(0.005)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert [type(r) for r in results] == [KeyboardInterrupt, KeyboardInterrupt]


# --- submit_async: coroutines, stored by the committer thread ------------------------------------


async def _submit_all_async(group: GroupCommit[Any, Any], items: list[Any]) -> list[Any]:
    """Submit every item from one coroutine each while a group is being stored; results or exceptions."""
    with group._leader:  # as if a group were being stored: the committer queues them behind it
        with group._async_lock:  # the committer takes them all at once
            futures = [group.submit_async(item) for item in items]
        await _until(lambda: len(group._queue) == len(items))
    return await asyncio.gather(*futures, return_exceptions=True)


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def test_coroutines_that_submit_together_are_stored_as_one_group_by_the_committer() -> None:
    store = Recorder()
    group = GroupCommit(store)
    results = asyncio.run(_submit_all_async(group, ["a", "b", "c"]))
    assert results == ["stored a", "stored b", "stored c"]
    assert store.groups == [["a", "b", "c"]]
    assert group._committer is not None and group._committer.name == "group-commit"


def test_coroutines_of_one_loop_turn_wake_the_committer_once_after_the_turn() -> None:
    store = Recorder()
    group = GroupCommit(store)
    notified: list[int] = []
    notify = group._async_lock.notify
    group._async_lock.notify = lambda n=1: (notified.append(n), notify(n))[1]  # type: ignore[method-assign]

    async def one_turn() -> list[Any]:
        futures = [group.submit_async(item) for item in ("a", "b", "c")]  # one turn of the loop: no await
        assert notified == []  # the committer is told once the loop has run what was ready
        return await asyncio.gather(*futures)

    assert asyncio.run(one_turn()) == ["stored a", "stored b", "stored c"]
    assert notified == [1]  # once for the turn, not once per item
    assert [item for g in store.groups for item in g] == ["a", "b", "c"]


def test_a_refused_coroutine_item_fails_only_its_own_future() -> None:
    store = Recorder()
    group = GroupCommit(store)
    results = asyncio.run(_submit_all_async(group, ["a", "bad", "c"]))
    assert results[0] == "stored a" and results[2] == "stored c"
    assert isinstance(results[1], ValueError)
    assert store.groups == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_threads_and_coroutines_submitting_together_share_a_group() -> None:
    store = Recorder()
    group = GroupCommit(store)

    async def both() -> tuple[list[Any], Any]:
        with group._leader:
            thread_result: list[Any] = []
            thread = threading.Thread(target=lambda: thread_result.append(group.submit("from a thread")))
            thread.start()
            await _until(lambda: len(group._queue) == 1)
            future = group.submit_async("from a coroutine")
            await _until(lambda: len(group._queue) == 2)
        result = await future
        thread.join(10)
        return thread_result, result

    thread_result, result = asyncio.run(both())
    assert thread_result == ["stored from a thread"] and result == "stored from a coroutine"
    assert store.groups == [["from a thread", "from a coroutine"]]  # one group; whoever led, no empty one


def test_each_group_is_answered_as_soon_as_it_is_stored() -> None:
    release = threading.Event()

    def store(items: Sequence[str]) -> list[str]:
        if "b" in items:
            assert release.wait(10)  # the second group takes its time
        return [f"stored {x}" for x in items]

    group = GroupCommit(store, max_items=1)

    async def run() -> list[Any]:
        with group._async_lock:
            first, second = group.submit_async("a"), group.submit_async("b")
        assert await asyncio.wait_for(first, 10) == "stored a"  # not held back until "b" is stored
        assert not second.done()
        release.set()
        return [await second]

    assert asyncio.run(run()) == ["stored b"]


def test_a_stop_iteration_from_storing_fails_its_caller_and_not_the_others() -> None:
    def store(items: Sequence[str]) -> list[str]:
        if "odd" in items:
            raise StopIteration  # an asyncio future refuses to carry it
        return [f"stored {x}" for x in items]

    group = GroupCommit(store)
    results = asyncio.run(_submit_all_async(group, ["a", "odd", "c"]))
    assert results[0] == "stored a" and results[2] == "stored c"
    assert isinstance(results[1], RuntimeError) and "StopIteration" in str(results[1])


def test_an_idle_committer_ends_and_the_next_item_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "COMMITTER_IDLE_SECONDS", 0.05)
    group = GroupCommit(Recorder())

    committers: list[threading.Thread | None] = []

    async def one(item: str) -> Any:
        future = group.submit_async(item)
        committers.append(group._committer)
        return await future

    assert asyncio.run(one("a")) == "stored a"
    first = committers[0]
    assert first is not None
    first.join(5)
    assert not first.is_alive() and group._committer is None  # nothing left to store: it ended
    assert asyncio.run(one("b")) == "stored b"


def test_the_committer_survives_an_interrupted_group_and_stores_the_next() -> None:
    calls: list[list[str]] = []

    def store(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        if len(calls) == 1:
            raise KeyboardInterrupt  # not an ordinary failure: no retry item by item
        return [f"stored {x}" for x in items]

    group = GroupCommit(store)

    async def twice() -> tuple[Any, Any]:
        first = await asyncio.gather(group.submit_async("a"), return_exceptions=True)
        return first[0], await group.submit_async("b")

    first, second = asyncio.run(twice())
    assert isinstance(first, KeyboardInterrupt)  # its caller got the error instead of waiting for ever
    assert second == "stored b"


# --- Node.send ------------------------------------------------------------------------------------


@pytest.fixture
def kz(node_pair: tuple[Node, Node]) -> Node:
    return node_pair[0]


def _requests(count: int, now: datetime) -> list[Document]:
    return [
        compose(
            russian_document("BY"),
            message_id=str(uuid.uuid4()),
            sender_party="KZ",
            now=now,
            attachments=[],
            answered=None,
        )
        for _ in range(count)
    ]


def test_sends_that_arrive_together_share_a_transaction_and_a_refused_one_changes_nothing(kz: Node) -> None:
    signatory = signatory_of(kz)
    now = datetime.now(UTC)
    good = _requests(3, now)
    unknown = str(uuid.uuid4())  # a result in a thread this node never heard of: the lifecycle refuses it
    refused = compose(
        {
            "kind": "execution_result",
            "recipient_party": "BY",
            "thread_id": unknown,
            "in_reply_to": unknown,
            "confidentiality": "confidential",
            "summary": "Исполнено.",
        },
        message_id=str(uuid.uuid4()),
        sender_party="KZ",
        now=now,
        attachments=[],
        answered=None,
    )
    with session_scope(kz.engine, readonly=True) as s:
        events_before = s.execute(select(func.count()).select_from(Event)).scalar_one()

    documents = [good[0], refused, good[1], good[2]]
    results = submit_together(
        kz._writes, documents, submit=lambda doc: kz.send(doc, signatory, [], actor="user:test")
    )

    assert isinstance(results[1], LifecycleError) and results[1].code == "lifecycle.unknown_thread"
    sent = [results[0], results[2], results[3]]
    assert [m.id for m in sent] == [d.id for d in good] and {m.status for m in sent} == {"queued"}
    with session_scope(kz.engine, readonly=True) as s:
        stored = set(s.execute(select(Message.id).where(Message.direction == "out")).scalars())
        queued = set(s.execute(select(Outbox.message_id)).scalars())
        sealed = list(
            s.execute(
                select(Event.object_id).where(Event.type == "message.sealed").order_by(Event.seq)
            ).scalars()
        )
        events_after = s.execute(select(func.count()).select_from(Event)).scalar_one()
        log_size = audit.size(s.connection())
    assert stored == queued == {d.id for d in good}  # the refused one left nothing behind
    assert sorted(sealed) == sorted(d.id for d in good)
    assert events_after == events_before + 3 == log_size  # the log's tree holds every entry, none twice


def test_send_async_stores_and_queues_like_send(kz: Node) -> None:
    signatory = signatory_of(kz)
    documents = _requests(4, datetime.now(UTC))
    kz.peers_changed()  # a stale peer entry is read again off the loop first

    async def send_all() -> list[Message]:
        sends = (kz.send_async(d, signatory, actor="user:test") for d in documents)
        return list(await asyncio.gather(*sends))

    sent = asyncio.run(send_all())
    assert [m.id for m in sent] == [d.id for d in documents] and {m.status for m in sent} == {"queued"}
    with session_scope(kz.engine, readonly=True) as s:
        queued = set(s.execute(select(Outbox.message_id)).scalars())
        sealed = set(s.execute(select(Event.object_id).where(Event.type == "message.sealed")).scalars())
    assert queued == sealed == {d.id for d in documents}


def _delivered_receipts(kz: Node, by: Node, count: int) -> list[tuple[Any, bytes, Any]]:
    """``count`` messages sent by KZ, claimed and received by BY: each claim with its verified receipt."""
    signatory = signatory_of(kz)
    for doc in _requests(count, datetime.now(UTC)):
        kz.send(doc, signatory, [], actor="user:test")
    claims = outbox.claim_due(kz.engine, "test", kz.clock(), count, 60).claims
    envelopes = [
        bytes(b)
        for b in small_blobs(kz.engine, [c.blob_id for c in claims], max_total=kz.settings.batch_max_bytes)
    ]
    worker = DeliveryWorker(kz)
    try:
        return [
            (claim, *worker._verified_receipt(claim, answer.status, answer.body))  # type: ignore[misc]
            for claim, answer in zip(claims, by.receive_batch(envelopes, "KZ"), strict=True)
        ]
    finally:
        worker.close()


def test_receipts_and_sends_that_arrive_together_share_one_transaction(node_pair: tuple[Node, Node]) -> None:
    """A delivery thread's receipts join the sends being stored: one commit, one audit-log lock for all."""
    kz, by = node_pair
    signatory = signatory_of(kz)
    receipted = _delivered_receipts(kz, by, 2)
    new = _requests(2, datetime.now(UTC))
    commits: list[int] = []

    def count(_conn: Any) -> None:
        commits.append(1)

    event.listen(kz.engine, "commit", count)
    try:
        results = submit_together(
            kz._writes,
            [Receipts(receipted), *new],
            submit=lambda item: (
                kz.record_receipts(item.receipted)
                if isinstance(item, Receipts)
                else kz.send(item, signatory, [], actor="user:test")
            ),
        )
    finally:
        event.remove(kz.engine, "commit", count)
    assert len(commits) == 1
    assert isinstance(results[0], datetime) and [m.status for m in results[1:]] == ["queued", "queued"]
    delivered = [claim.message_id for claim, _, _ in receipted]
    with session_scope(kz.engine, readonly=True) as s:
        rows = {m.id: m for m in s.execute(select(Message).where(Message.id.in_(delivered))).scalars()}  # type: ignore[attr-defined]
        received = s.execute(select(Event.object_id).where(Event.type == "receipt.received")).scalars().all()
        log_size = audit.size(s.connection())
        events = s.execute(select(func.count()).select_from(Event)).scalar_one()
    assert {m.status for m in rows.values()} == {"delivered"}
    assert all(m.receipt_verified for m in rows.values())
    assert all(m.delivered_at == results[0] for m in rows.values())
    assert sorted(received) == sorted(delivered)
    assert log_size == events  # the log's tree holds every entry, none twice


def test_a_refused_send_never_fails_the_receipts_stored_with_it(node_pair: tuple[Node, Node]) -> None:
    kz, by = node_pair
    signatory = signatory_of(kz)
    receipted = _delivered_receipts(kz, by, 2)
    unknown = str(uuid.uuid4())  # a result in a thread this node never heard of: the lifecycle refuses it
    refused = compose(
        {
            "kind": "execution_result",
            "recipient_party": "BY",
            "thread_id": unknown,
            "in_reply_to": unknown,
            "confidentiality": "confidential",
            "summary": "Исполнено.",
        },
        message_id=str(uuid.uuid4()),
        sender_party="KZ",
        now=datetime.now(UTC),
        attachments=[],
        answered=None,
    )
    results = submit_together(
        kz._writes,
        [refused, Receipts(receipted)],
        submit=lambda item: (
            kz.record_receipts(item.receipted)
            if isinstance(item, Receipts)
            else kz.send(item, signatory, [], actor="user:test")
        ),
    )
    assert isinstance(results[0], LifecycleError) and isinstance(results[1], datetime)
    with session_scope(kz.engine, readonly=True) as s:
        statuses = set(
            s.execute(
                select(Message.status).where(
                    Message.id.in_(  # type: ignore[attr-defined]
                        [claim.message_id for claim, _, _ in receipted]
                    )
                )
            ).scalars()
        )
        assert s.get(Message, (refused.id, "out")) is None
    assert statuses == {"delivered"}


class _FailingWorker:
    """A local worker whose hand-over fails (``Node.worker``): what comes after the commit."""

    worker_id = "test-worker"

    def __init__(self) -> None:
        self.handed = 0

    def hand_over(self, claims: Sequence[Any]) -> None:
        self.handed += len(claims)
        raise RuntimeError("hand-over failed")

    def has_room(self, peer: str) -> bool:
        return True

    def wake(self) -> None:
        pass


def test_a_failure_after_the_commit_never_stores_a_group_twice(node_pair: tuple[Node, Node]) -> None:
    """Receipts and a send stored together, then the hand-over fails: each is stored once, its caller
    gets its result, and the send stays leased to the worker (claimed again when its lease ends)."""
    kz, by = node_pair
    signatory = signatory_of(kz)
    receipted = _delivered_receipts(kz, by, 2)
    [new] = _requests(1, datetime.now(UTC))
    kz.worker = worker = _FailingWorker()
    try:
        results = submit_together(
            kz._writes,
            [Receipts(receipted), new],
            submit=lambda item: (
                kz.record_receipts(item.receipted)
                if isinstance(item, Receipts)
                else kz.send(item, signatory, [], actor="user:test")
            ),
        )
    finally:
        kz.worker = None
    assert isinstance(results[0], datetime) and results[1].status == "in_flight" and worker.handed == 1
    with session_scope(kz.engine, readonly=True) as s:
        types = s.execute(select(Event.type, func.count()).group_by(Event.type)).all()
        claimed_by = s.execute(select(Outbox.claimed_by).where(Outbox.message_id == new.id)).scalar_one()
    counts = dict(types)  # type: ignore[arg-type]
    assert counts["receipt.received"] == 2 and counts["message.sealed"] == 3  # the two delivered, and new
    assert claimed_by == "test-worker"


def test_the_first_receipt_for_a_row_counts_when_a_group_holds_two(node_pair: tuple[Node, Node]) -> None:
    """One row's receipts from two deliveries (two claims of it) stored in one group: the first is kept."""
    kz, by = node_pair
    [(claim, receipt_bytes, receipt)] = _delivered_receipts(kz, by, 1)
    kz.record_receipts([(claim, receipt_bytes, receipt), (claim, b"a later copy", receipt)])
    with session_scope(kz.engine, readonly=True) as s:
        stored = s.get(Message, (claim.message_id, "out"))
        assert stored is not None and stored.status == "delivered" and stored.receipt == receipt_bytes

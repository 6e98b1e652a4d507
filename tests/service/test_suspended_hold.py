"""A claim for a peer suspended since it was claimed goes back to the queue unsent
(``admin.hold_if_suspended``, ``outbox.give_back``): only while its worker still holds the row, and its
message only with it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bench.bench_exchange import russian_document
from service import outbox
from service.admin import hold_if_suspended, set_peer_suspended
from service.db import session_scope
from service.models import Message, Outbox
from service.node import Node
from service.user_api import compose_for
from tests.service.conftest import signatory_of


@pytest.fixture
def kz(node_pair: tuple[Node, Node]) -> Node:
    return node_pair[0]


def send(node: Node) -> str:
    document = compose_for(node, russian_document("BY"), [])
    return node.send(document, signatory_of(node), [], actor="user:test").id


def state(node: Node, message_id: str) -> tuple[Any, ...]:
    with session_scope(node.engine, readonly=True) as s:
        message = s.get(Message, (message_id, "out"))
        row = s.execute(select(Outbox).where(Outbox.message_id == message_id)).scalar_one()
        return row.state, row.claimed_by, row.attempts, message.status


def test_a_stale_claim_for_a_suspended_peer_leaves_the_row_and_message_of_the_worker_that_took_it_over(
    kz: Node,
) -> None:
    mid = send(kz)
    start = kz.clock()
    [stale] = outbox.claim_due(kz.engine, "worker-a", start, 10, 60).claims
    [taken] = outbox.claim_due(kz.engine, "worker-b", start + timedelta(seconds=61), 10, 60).claims  # A hung
    assert state(kz, mid) == ("in_flight", "worker-b", 2, "in_flight")
    set_peer_suspended(kz, "BY", True, actor="user:test", reason="test")

    assert hold_if_suspended(kz, stale)  # A wakes up: nothing is sent, and B's row is B's
    assert state(kz, mid) == ("in_flight", "worker-b", 2, "in_flight")

    assert hold_if_suspended(kz, taken)  # B's own claim goes back, its attempt given back
    assert state(kz, mid) == ("queued", None, 1, "queued")


def test_a_stale_claim_never_gives_back_the_same_workers_later_claim_of_the_row(kz: Node) -> None:
    mid = send(kz)
    start = kz.clock()
    [stale] = outbox.claim_due(kz.engine, "worker-a", start, 10, 60).claims
    [again] = outbox.claim_due(kz.engine, "worker-a", start + timedelta(seconds=61), 10, 60).claims
    set_peer_suspended(kz, "BY", True, actor="user:test", reason="test")

    assert hold_if_suspended(kz, stale)  # the first attempt's claim: nothing to give back
    assert state(kz, mid) == ("in_flight", "worker-a", 2, "in_flight")
    assert hold_if_suspended(kz, again)
    assert state(kz, mid) == ("queued", None, 1, "queued")

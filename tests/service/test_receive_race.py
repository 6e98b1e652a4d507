"""A delivery that races another of the same message: the receiver's one-transaction store of the batch
fails on the duplicate (on PostgreSQL inside a pipeline of writes), and the batch is stored again
envelope by envelope, the raced one answered with the receipt stored for it (``Node._store_checked``)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from bench.bench_exchange import russian_document
from service import outbox
from service.blobs import small_blobs
from service.db import session_scope
from service.models import Blob, Event, Message
from service.node import Node
from service.user_api import compose_for
from tests.service.conftest import signatory_of


@pytest.fixture
def nodes(node_pair: tuple[Node, Node]) -> tuple[Node, Node]:
    return node_pair


def _count(node: Node, what: object) -> int:
    with session_scope(node.engine, readonly=True) as s:
        return int(s.execute(select(func.count()).select_from(what)).scalar_one())  # type: ignore[arg-type]


def test_a_message_a_racing_delivery_stored_first_gets_its_stored_receipt_and_nothing_twice(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    kz, by = nodes
    signatory = signatory_of(kz)
    for _ in range(2):
        kz.send(compose_for(kz, russian_document("BY"), []), signatory, [], actor="user:test")
    claims = outbox.claim_due(kz.engine, "test", kz.clock(), 10, 60).claims
    envelopes = small_blobs(kz.engine, [c.blob_id for c in claims])
    [first] = by.receive_batch(envelopes[:1], "KZ")
    assert first.status == 200 and "redelivery" not in first.body
    events, blobs = _count(by, Event), _count(by, Blob)

    # The other delivery looked for stored ids before the first one committed, so it found none.
    looked_up = by._stored_inbound
    lookups: list[list[str]] = []

    def too_early_the_first_time(ids: list[str]) -> dict[str, object]:
        lookups.append(ids)
        return {} if len(lookups) == 1 else looked_up(ids)  # type: ignore[return-value]

    monkeypatch.setattr(by, "_stored_inbound", too_early_the_first_time)
    answers = by.receive_batch(envelopes, "KZ")

    assert [a.status for a in answers] == [200, 200]
    assert answers[0].body["redelivery"] is True  # answered from what the first delivery stored
    assert answers[0].body["receipt"] == first.body["receipt"]
    assert "redelivery" not in answers[1].body  # the other envelope stored anew
    assert _count(by, Message) == 2
    assert _count(by, Blob) == blobs + 1  # the failed attempt's rows went with its transaction
    assert _count(by, Event) == events + 2  # received + receipt issued, for the second message only


def _two_envelopes(kz: Node) -> list[bytes]:
    signatory = signatory_of(kz)
    for _ in range(2):
        kz.send(compose_for(kz, russian_document("BY"), []), signatory, [], actor="user:test")
    claims = outbox.claim_due(kz.engine, "test", kz.clock(), 10, 60).claims
    return small_blobs(kz.engine, [c.blob_id for c in claims])


def test_a_redelivered_batch_is_answered_as_stored_even_where_opening_it_now_fails(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a batch is opened before it is known which of it was stored (``Node._check_framed``):
    a redelivery is still answered with its stored receipt, and its failed opening records nothing."""
    kz, by = nodes
    envelopes = _two_envelopes(kz)
    first = by.receive_batch(envelopes, "KZ")
    assert [a.status for a in first] == [200, 200]
    events = _count(by, Event)

    now = by.clock()
    monkeypatch.setattr(
        by, "clock", lambda: now + timedelta(days=30)
    )  # both now far outside the clock window
    again = by.receive_batch(envelopes, "KZ")

    assert [a.status for a in again] == [200, 200]
    assert all(a.body["redelivery"] is True for a in again)
    assert [a.body["receipt"] for a in again] == [a.body["receipt"] for a in first]
    assert _count(by, Event) == events  # no rejection recorded for the openings that failed
    assert _count(by, Message) == 2


@pytest.mark.parametrize("node_pair", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_on_postgresql_a_batch_is_opened_while_its_stored_rows_are_looked_up(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup's round trip to the server is not waited for on its own: it is in flight while the
    envelopes are verified and decrypted."""
    kz, by = nodes
    envelopes = _two_envelopes(kz)
    opening = threading.Event()
    looked_up, opened = by._stored_inbound, by._open
    seen: list[tuple[str, bool]] = []

    def lookup(ids: list[str]) -> dict[str, object]:
        seen.append((threading.current_thread().name, opening.wait(10)))  # (would wait in vain, done in turn)
        return looked_up(ids)  # type: ignore[return-value]

    def open_envelope(*args: object) -> object:
        opening.set()
        return opened(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(by, "_stored_inbound", lookup)
    monkeypatch.setattr(by, "_open", open_envelope)
    answers = by.receive_batch(envelopes, "KZ")

    assert [a.status for a in answers] == [200, 200]
    [(thread, opened_meanwhile)] = seen
    assert thread.startswith("inbound-lookup") and opened_meanwhile

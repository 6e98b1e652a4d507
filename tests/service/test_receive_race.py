"""A delivery that races another of the same message: the receiver's one-transaction store of the batch
fails on the duplicate (on PostgreSQL inside a pipeline of writes), and the batch is stored again
envelope by envelope, the raced one answered with the receipt stored for it (``Node._store_checked``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.bench_exchange import russian_document
from service import demo, outbox
from service.blobs import small_blobs
from service.db import session_scope
from service.models import Blob, Event, Message, User
from service.node import Node
from service.server import build_node
from service.user_api import compose_for


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    urls: dict[str, str | None] = {"KZ": None, "BY": None}
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_database")
        urls = {"KZ": make(), "BY": make()}
    kz_party = demo.setup_party(tmp_path, "KZ", "Kaz", urls["KZ"])
    by_party = demo.setup_party(tmp_path, "BY", "Bel", urls["BY"])
    demo.introduce(kz_party, by_party)
    demo.introduce(by_party, kz_party)
    kz, by = build_node(kz_party.data_dir), build_node(by_party.data_dir)
    yield kz, by
    kz.engine.dispose()
    by.engine.dispose()


def _count(node: Node, what: object) -> int:
    with session_scope(node.engine, readonly=True) as s:
        return int(s.execute(select(func.count()).select_from(what)).scalar_one())  # type: ignore[arg-type]


def test_a_message_a_racing_delivery_stored_first_gets_its_stored_receipt_and_nothing_twice(
        nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    kz, by = nodes
    with session_scope(kz.engine, readonly=True) as s:
        key_id = s.execute(select(User.signatory_key_id).where(
            User.signatory_key_id.is_not(None))).scalar_one()  # type: ignore[union-attr]
    signatory = kz.signatory(key_id)
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

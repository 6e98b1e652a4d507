"""Batched deliveries between two real nodes: one request, one commit, one answer and receipt per envelope.

A batch changes nothing about what each envelope must pass: every envelope in
it is verified, stored or refused exactly as if it had come alone, a refused
one changes nothing stored, and the others are not held back by it.
"""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select

import protocol
from service.db import make_engine, session_scope
from service.models import Outbox
from service.peer_api import BATCH_MEDIA_TYPE, BATCH_PATH
from service.settings import Settings
from tests.integration.helpers import (
    craft_envelope,
    messages,
    peer_client,
    request_fields,
    row_counts,
    send,
    trusted,
    wait_for,
)


def outbox_rows(p) -> list[Outbox]:
    engine = make_engine(Settings.load(p.data_dir).database_url)
    try:
        with session_scope(engine, readonly=True) as s:
            return list(s.execute(select(Outbox)).scalars())
    finally:
        engine.dispose()


def post_batch(pair, raw: bytes):
    with peer_client(pair.kz, pair.by) as c:
        return c.post(BATCH_PATH, content=raw, headers={"content-type": BATCH_MEDIA_TYPE})


def receipt_of(pair, answer: dict, envelope: bytes) -> protocol.Receipt:
    """The answer's receipt, verified against BY's bundle for exactly ``envelope``."""
    raw = protocol.Signed.from_json(answer["receipt"], what="receipt").to_bytes()
    return protocol.verify_receipt(
        raw,
        trusted(pair.by),
        envelope_sha256=hashlib.sha256(envelope).digest(),
        message_id=protocol.read_framing(envelope).header.message_id,
        sender="KZ",
    )


def test_each_envelope_in_a_batch_is_judged_alone_and_answered_with_its_own_receipt(pair) -> None:
    good_1, good_2 = craft_envelope(pair.kz, pair.by), craft_envelope(pair.kz, pair.by)
    tampered = bytearray(craft_envelope(pair.kz, pair.by))
    tampered[-1] ^= 0x01
    unknown = str(uuid.uuid4())
    orphan_result = craft_envelope(
        pair.kz,
        pair.by,
        document={
            "kind": "execution_result",
            "thread_id": unknown,
            "in_reply_to": unknown,
            "confidentiality": "confidential",
            "summary": "Исполнено.",
        },
    )
    batch = [good_1, bytes(tampered), orphan_result, b"not an envelope", good_2, good_1]
    before = row_counts(pair.by)

    r = post_batch(pair, protocol.encode_batch(batch))

    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [a["http_status"] for a in results] == [200, 401, 409, 400, 200, 200]
    assert [a["status"] for a in results] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
        "accepted",
    ]
    assert results[1]["error"]["code"] == "envelope.bad_signature"
    assert results[2]["error"]["code"] == "lifecycle.unknown_thread"
    assert results[3]["error"]["code"] == "encoding.malformed"
    for answer, envelope in zip(results, batch, strict=True):
        if (
            "receipt" in answer
        ):  # everything readable enough to name a message is answered with a signed receipt
            rec = receipt_of(pair, answer, envelope)
            assert rec.status == answer["status"]
    assert results[5]["receipt"] == results[0]["receipt"]  # the same bytes twice: the one stored receipt
    stored = {m.id for m in messages(pair.by, "in")}
    ids = [protocol.read_framing(e).header.message_id for e in (good_1, good_2, orphan_result)]
    assert ids[0] in stored and ids[1] in stored and ids[2] not in stored
    after = row_counts(pair.by)
    assert after["Message"] == before["Message"] + 2

    # The whole batch again: redeliveries get their stored receipts, nothing new is stored.
    again = post_batch(pair, protocol.encode_batch(batch)).json()["results"]
    assert again[0]["receipt"] == results[0]["receipt"] and again[0].get("redelivery") is True
    assert again[4]["receipt"] == results[4]["receipt"]
    assert row_counts(pair.by) == after


def test_a_malformed_or_oversized_batch_is_refused_whole_and_changes_nothing(make_pair) -> None:
    pair = make_pair("sqlite", batch_max_items=4, batch_max_bytes=64 * 1024)
    pair.start()
    before = row_counts(pair.by)
    envelope = craft_envelope(pair.kz, pair.by)

    garbage = post_batch(pair, protocol.encode_batch([envelope, envelope])[:-5])  # cut inside the second
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "batch.malformed"
    too_many = post_batch(pair, protocol.encode_batch([envelope] * 5))
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "batch.too_many"
    too_big = post_batch(pair, protocol.encode_batch([envelope, b"x" * (64 * 1024)]))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "batch.too_large"
    assert row_counts(pair.by) == before


def queue_while_by_is_down(pair, count: int, by_env: dict[str, str] | None = None) -> list[str]:
    """``count`` requests from KZ, all due at the same moment once BY is up again (so one claim takes them).

    BY is down: each message is tried once, then waits an hour (the pair's backoff). The operator parks
    them, holds BY, requeues them (due now), starts BY and lets it go.
    """
    pair.start(pair.kz)
    sent = [send(pair.kz, request_fields("BY"))["id"] for _ in range(count)]
    wait_for(
        "a first failed attempt each",
        lambda: all(m.state == "queued" and m.attempts == 1 for m in outbox_rows(pair.kz)),
    )
    with pair.kz.client("operator") as op:
        for mid in sent:
            assert op.post(f"/v1/admin/outbox/{mid}/park", json={"reason": "test"}).status_code == 200, mid
        assert op.post("/v1/admin/peers/BY/suspend", json={"reason": "test"}).status_code == 200
        for mid in sent:
            assert op.post(f"/v1/admin/outbox/{mid}/requeue").status_code == 200, mid
        pair.start(pair.by, env=by_env)
        assert op.post("/v1/admin/peers/BY/resume").status_code == 200
    return sent


def all_delivered(pair, sent: list[str]) -> None:
    wait_for(
        "all delivered",
        lambda: {m.id: m.status for m in messages(pair.kz, "out")} == dict.fromkeys(sent, "delivered"),
    )
    assert {m.id for m in messages(pair.by, "in")} == set(sent)
    assert all(m.receipt_verified and m.receipt_status == "accepted" for m in messages(pair.kz, "out"))


WAIT_AN_HOUR = {"delivery_backoff_base_seconds": 3600, "delivery_backoff_max_seconds": 3600}


def test_messages_waiting_for_the_peer_go_out_together_in_one_batch(make_pair, backend) -> None:
    pair = make_pair(backend, **WAIT_AN_HOUR)
    sent = queue_while_by_is_down(pair, 12)
    all_delivered(pair, sent)
    batches = [e for e in pair.events(pair.kz) if e["event"] == "delivery_batch" and e["envelopes"] == 12]
    assert len(batches) == 1
    assert batches[0]["messages"] == dict.fromkeys(sent, "delivered")  # each message's outcome, by its id


def test_a_peer_taking_smaller_batches_gets_each_envelope_alone(make_pair) -> None:
    pair = make_pair("sqlite", **WAIT_AN_HOUR)
    sent = queue_while_by_is_down(pair, 6, by_env={"PROLINK_BATCH_MAX_ITEMS": "1"})  # BY: no batch of 2+
    all_delivered(pair, sent)
    events = pair.events(pair.kz)
    assert any(e["event"] == "peer_refused_batch" for e in events)
    assert any(e.get("next_batch_items") == 1 for e in events)  # remembered: no more big batches

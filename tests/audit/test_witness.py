"""The peer as witness: it cosigns heads that extend what it saw, and catches a log that rewrote its history.

KZ's node keeps the log; BY's node judges each head KZ pushes (``accept_head``
is what ``POST /v1/log/heads`` runs). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import delete, select, update

import protocol
from service import audit
from service.audit_heads import HeadPublisher
from service.audit_witness import accept_head
from service.db import session_scope
from service.models import (
    AuditAlert,
    AuditCosignature,
    AuditHead,
    AuditNode,
    AuditPeerHead,
    AuditState,
    Event,
)
from service.node import Node
from tests.audit.conftest import cosign, introduce, log_events, sign


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pair(request: pytest.FixtureRequest, make_node) -> tuple[Node, Node]:  # type: ignore[no-untyped-def]
    kz, by = make_node("KZ", request.param), make_node("BY", request.param)
    introduce(kz, by)
    return kz, by


def alerts(node: Node) -> list[AuditAlert]:
    with session_scope(node.engine, readonly=True) as s:
        return list(s.execute(select(AuditAlert).order_by(AuditAlert.id)).scalars())  # type: ignore[arg-type]


def audit_types(node: Node) -> list[str]:
    with session_scope(node.engine, readonly=True) as s:
        return list(s.execute(select(Event.type).order_by(Event.seq)).scalars())  # type: ignore[arg-type]


def rewrite_history(node: Node, keep: int, new_events: int) -> None:
    """What an insider with database access would do: cut the log back to ``keep`` entries, append others."""
    with session_scope(node.engine) as s:
        conn = s.connection()
        cr = audit.compact_range_at(conn, keep)
        s.execute(delete(AuditCosignature).where(AuditCosignature.head_size > keep))
        s.execute(delete(AuditHead).where(AuditHead.size > keep))
        s.execute(delete(Event).where(Event.seq >= keep))
        for level in range(1, 64):
            s.execute(delete(AuditNode).where(AuditNode.level == level, AuditNode.idx >= (keep >> level)))
        s.execute(update(AuditState).values(size=keep, frontier=audit.pack(cr)))
    log_events(node, new_events, start=10_000, kind="message.sealed")


def test_heads_that_extend_the_last_one_are_cosigned(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 5)
    first = sign(kz)
    assert first is not None and first.size == 6  # five events and peer.added
    assert cosign(by, kz)["status"] == 200
    log_events(kz, 7, start=5)
    assert sign(kz).size == 13  # type: ignore[union-attr]
    answer = cosign(by, kz)
    assert answer["status"] == 200 and answer["size"] == 13
    assert sign(kz) is None  # nothing new: no new head
    with session_scope(kz.engine, readonly=True) as s:
        cosigned = s.execute(select(AuditCosignature.head_size)).scalars().all()
        note = protocol.parse_note(audit.cosigned_note(s, audit.latest_head(s)))  # type: ignore[arg-type]
    assert sorted(cosigned) == [6, 13]
    # The stored note is a standard checkpoint with BY's cosignature/v1 line on it.
    by_keys = [k for k, _ in by.identity.trusted_self().bundle.signing_keys]
    assert [ts for _, ts in protocol.find_cosignatures(note, "prolink.by/witness", by_keys)]
    with session_scope(by.engine, readonly=True) as s:
        assert s.execute(select(AuditPeerHead.size).order_by(AuditPeerHead.size)).scalars().all() == [6, 13]
    assert alerts(by) == []


def test_a_push_from_the_wrong_base_is_answered_with_the_accepted_size(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 3)
    sign(kz)
    cosign(by, kz)
    log_events(kz, 3, start=3)
    head = sign(kz)
    answer = accept_head(by, "KZ", HeadPublisher(kz)._request(head, 1))  # type: ignore[arg-type]
    assert answer.status == 409 and answer.body["error"]["code"] == "audit.base_mismatch"
    assert answer.body["accepted"]["size"] == 4
    assert alerts(by) == []


def test_a_rolled_back_and_rewritten_log_is_caught_by_the_peer(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 10)
    sign(kz)
    assert cosign(by, kz)["status"] == 200  # BY holds KZ's head of size 11
    rewrite_history(kz, keep=6, new_events=9)  # 6 + 9 = 15 entries, the last 9 different
    head = sign(kz)
    assert head is not None and head.size == 15
    answer = cosign(by, kz)
    assert answer["status"] == 409
    assert answer["error"]["code"] == "audit.inconsistent_head"
    assert "head of size 15" in answer["error"]["message"] and "size 11" in answer["error"]["message"]
    assert "rolled back or rewritten" in answer["error"]["message"]
    [alert] = alerts(by)
    assert alert.party == "KZ" and alert.code == "audit.inconsistent_head"
    assert alert.evidence["accepted_size"] == 11 and alert.evidence["offered_size"] == 15
    # Both signed heads are kept as evidence: each verifies under KZ's bundle.
    kz_keys = [k for k, _ in kz.identity.trusted_self().bundle.signing_keys]
    for note in (alert.evidence["accepted_checkpoint"], alert.evidence["offered_checkpoint"]):
        protocol.open_checkpoint(note.encode(), "prolink.kz/audit", kz_keys)
    assert audit_types(by)[-1] == "audit.alert"
    # The refused head is not cosigned, and retrying does not pile up alerts.
    assert cosign(by, kz)["status"] == 409
    assert len(alerts(by)) == 1
    with session_scope(kz.engine, readonly=True) as s:
        assert s.get(AuditCosignature, (15, "BY")) is None


def test_a_log_cut_back_below_the_witnessed_size_is_caught(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 10)
    sign(kz)
    cosign(by, kz)  # size 11
    rewrite_history(kz, keep=4, new_events=3)  # now 7 entries: smaller than what BY saw
    sign(kz)
    answer = cosign(by, kz)
    assert answer["status"] == 409 and answer["error"]["code"] == "audit.inconsistent_head"
    assert "smaller than and not a prefix of" in answer["error"]["message"]
    assert [a.code for a in alerts(by)] == ["audit.inconsistent_head"]


def test_a_fork_at_the_same_size_is_caught(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 4)
    sign(kz)
    cosign(by, kz)  # size 5
    rewrite_history(kz, keep=3, new_events=2)  # size 5 again, different root
    sign(kz)
    answer = cosign(by, kz)
    assert answer["status"] == 409 and "two different roots for the same size 5" in answer["error"]["message"]
    assert len(alerts(by)) == 1


def test_a_stale_but_consistent_head_is_refused_without_alarm(pair) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 4)
    old = sign(kz)
    log_events(kz, 4, start=4)
    sign(kz)
    cosign(by, kz)  # BY holds size 9
    with session_scope(kz.engine, readonly=True) as s:
        proof = audit.consistency(s.connection(), old.size, 9)  # type: ignore[union-attr]
    body = {
        "checkpoint": old.note.decode(),
        "old_size": 9,  # type: ignore[union-attr]
        "proof": [base64.b64encode(h).decode() for h in proof],
    }
    answer = accept_head(by, "KZ", body)
    assert answer.status == 409 and answer.body["error"]["code"] == "audit.stale_head"
    assert alerts(by) == []


def test_heads_not_signed_by_the_peer_are_refused(pair, make_node) -> None:  # type: ignore[no-untyped-def]
    kz, by = pair
    log_events(kz, 2)
    head = sign(kz)
    body = HeadPublisher(kz)._request(head, 0)  # type: ignore[arg-type]
    stranger = make_node("RU")
    forged = protocol.sign_checkpoint(
        protocol.Checkpoint.parse(protocol.parse_note(head.note).text),  # type: ignore[union-attr]
        stranger.identity.node_keys.signing,
    )
    answer = accept_head(by, "KZ", {**body, "checkpoint": forged.decode()})
    assert answer.status == 401 and answer.body["error"]["code"] == "audit.unknown_key"
    tampered = body["checkpoint"].replace(f"\n{head.size}\n", f"\n{head.size + 1}\n")  # type: ignore[union-attr]
    answer = accept_head(by, "KZ", {**body, "checkpoint": tampered})
    assert answer.status == 401 and answer.body["error"]["code"] == "audit.bad_signature"
    other_origin = body["checkpoint"].replace("prolink.kz", "prolink.by")
    answer = accept_head(by, "KZ", {**body, "checkpoint": other_origin})
    assert answer.status == 400 and answer.body["error"]["code"] == "audit.wrong_origin"
    assert alerts(by) == []


def test_the_peer_api_routes_answer_with_codes(pair) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from service.peer_api import create_peer_app

    kz, by = pair
    log_events(kz, 3)
    head = sign(kz)
    client = TestClient(create_peer_app(by))
    assert client.get("/v1/log/heads/KZ").json()["error"]["code"] == "audit.no_head"
    r = client.post("/v1/log/heads", json=HeadPublisher(kz)._request(head, 0))  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    got = client.get("/v1/log/heads/KZ").json()
    assert got["size"] == head.size and got["cosignature"] == r.json()["cosignature"]  # type: ignore[union-attr]
    assert client.post("/v1/log/heads", content=b"not json").json()["error"]["code"] == "audit.bad_request"
    deep = client.post("/v1/log/heads", content=b"[" * 100_000)  # deeper than the parser goes: was a 500
    assert (deep.status_code, deep.json()["error"]["code"]) == (400, "audit.bad_request")

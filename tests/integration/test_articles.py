"""The agreement's request lifecycle end to end, through the user API of two real nodes
(Art. 4-6, 8, 10, 11, 14).

One pair of nodes serves the whole module (each test opens its own threads);
tests that change the agreement itself (termination) get a pair of their own.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from keys import add_signatory
from service.auth import create_user
from service.case_models import Original
from service.db import make_engine, session_scope
from service.settings import Settings
from tests.integration.helpers import (
    PURPOSE,
    craft_envelope,
    deliver,
    request_fields,
    row_counts,
    send,
    wait_status,
)

pytestmark = pytest.mark.integration

C = {"confidentiality": "confidential"}


def post(p, role: str, path: str, **kw: Any):
    with p.client(role) as c:
        return c.post(path, **kw)


def get(p, role: str, path: str, **kw: Any) -> Any:
    with p.client(role) as c:
        r = c.get(path, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def reply(p, kind: str, to: str, **fields: Any) -> dict[str, Any]:
    sent = send(p, {"kind": kind, "in_reply_to": to, **C, **fields})
    wait_status(p, sent["id"])
    return sent


def state_on_both(pair, thread_id: str) -> tuple[str, str]:
    return (
        get(pair.kz, "reader", f"/v1/requests/{thread_id}")["state"],
        get(pair.by, "reader", f"/v1/requests/{thread_id}")["state"],
    )


def open_request(pair, **extra: Any) -> str:
    sent = send(pair.kz, request_fields("BY", **extra))
    wait_status(pair.kz, sent["id"])
    return str(sent["id"])


def test_art4_art5_request_with_attachments_signed_accepted_and_executed(shared_pair) -> None:
    pair = shared_pair
    sent = send(
        pair.kz,
        request_fields("BY"),
        files=[("протокол.pdf", os.urandom(200_000)), ("опись.txt", "Опись документов".encode())],
    )
    wait_status(pair.kz, sent["id"])
    rid = sent["id"]
    assert state_on_both(pair, rid) == ("sent", "sent")
    reply(pair.by, "acceptance", rid, note="Принят к исполнению.")
    assert state_on_both(pair, rid) == ("accepted", "accepted")
    result = reply(pair.by, "execution_result", rid, summary="Исполнено, материалы прилагаются.")
    assert state_on_both(pair, rid) == ("executed", "executed")
    steps = get(pair.kz, "reader", f"/v1/requests/{rid}/timeline")["steps"]
    assert [s["kind"] for s in steps] == ["request", "acceptance", "execution_result"]
    assert [s["side"] for s in steps] == ["KZ", "BY", "BY"]
    assert steps[2]["message_id"] == result["id"] and steps[2]["signer"].startswith("Подписант BY")
    view = get(pair.by, "reader", f"/v1/requests/{rid}")
    assert view["our_role"] == "requested" and view["due_on"] and view["overdue"] is False


def test_art5_result_before_acceptance_is_refused(shared_pair) -> None:
    rid = open_request(shared_pair)
    r = post(
        shared_pair.by,
        "signatory",
        "/v1/messages",
        json={"kind": "execution_result", "in_reply_to": rid, **C, "summary": "Исполнено."},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "lifecycle.transition_not_allowed"
    assert state_on_both(shared_pair, rid) == ("sent", "sent")


def test_art5_reply_from_the_wrong_side_is_refused(shared_pair) -> None:
    rid = open_request(shared_pair)
    r = post(
        shared_pair.kz, "signatory", "/v1/messages", json={"kind": "acceptance", "in_reply_to": rid, **C}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "lifecycle.transition_not_allowed"


def test_art5_receiving_node_enforces_the_lifecycle_too(shared_pair) -> None:
    """A result the receiver's table forbids (for a thread it never saw, or before acceptance) is refused
    by the receiving node itself, with a signed rejection, and nothing is stored."""
    pair = shared_pair
    unknown = str(uuid.uuid4())
    result = {
        "kind": "execution_result",
        "thread_id": unknown,
        "in_reply_to": unknown,
        **C,
        "summary": "Исполнено.",
    }
    before = row_counts(pair.kz)
    r = deliver(pair.by, pair.kz, craft_envelope(pair.by, pair.kz, document=result))
    assert r.status_code == 409 and r.json()["error"]["code"] == "lifecycle.unknown_thread"
    assert r.json()["receipt"]["payloadType"].endswith("receipt+json")
    rid = open_request(pair)  # KZ asked; BY has not accepted yet
    early = {**result, "thread_id": rid, "in_reply_to": rid}
    r = deliver(pair.by, pair.kz, craft_envelope(pair.by, pair.kz, document=early))
    assert r.status_code == 409 and r.json()["error"]["code"] == "lifecycle.transition_not_allowed"
    assert row_counts(pair.kz)["Message"] == before["Message"] + 1  # only the request KZ sent
    assert state_on_both(pair, rid) == ("sent", "sent")


def test_art5_additional_information_asked_and_given_repeatedly(shared_pair) -> None:
    pair = shared_pair
    rid = open_request(pair)
    reply(pair.by, "acceptance", rid)
    ask = reply(pair.by, "additional_info_request", rid, questions="Уточните номер счёта и период.")
    assert state_on_both(pair, rid) == ("info_requested", "info_requested")
    reply(pair.kz, "additional_info", ask["id"], content="Счёт № 123, период: январь — июнь 2026 года.")
    assert state_on_both(pair, rid) == ("info_provided", "info_provided")
    ask2 = reply(pair.by, "additional_info_request", rid, questions="Нужна копия постановления.")
    reply(pair.kz, "additional_info", ask2["id"], content="Копия постановления прилагается.")
    reply(pair.by, "execution_result", rid, summary="Исполнено.")
    assert state_on_both(pair, rid) == ("executed", "executed")


def test_art5_delay_notice_moves_the_due_date_on_both_sides(shared_pair) -> None:
    pair = shared_pair
    rid = open_request(pair)
    reply(pair.by, "acceptance", rid)
    new_date = (date.today() + timedelta(days=90)).isoformat()
    reply(
        pair.by,
        "delay_notice",
        rid,
        reason="Требуется запрос в банк, срок ответа банка 60 дней.",
        new_expected_date=new_date,
    )
    assert state_on_both(pair, rid) == ("delayed", "delayed")
    assert get(pair.kz, "reader", f"/v1/requests/{rid}")["due_on"] == new_date
    assert get(pair.by, "reader", f"/v1/requests/{rid}")["due_on"] == new_date


def test_art6_request_refused_in_part_then_executed_for_the_rest(shared_pair) -> None:
    pair = shared_pair
    rid = open_request(pair)
    reply(pair.by, "acceptance", rid)
    reply(
        pair.by,
        "refusal",
        rid,
        scope="partial",
        ground="national_law",
        reason="Сведения о третьих лицах не могут быть переданы по законодательству Республики Беларусь.",
    )
    assert state_on_both(pair, rid) == ("partially_refused", "partially_refused")
    reply(pair.by, "execution_result", rid, summary="Исполнено в остальной части.")
    assert state_on_both(pair, rid) == ("executed", "executed")


def test_art6_refusal_without_ground_or_reason_is_rejected(shared_pair) -> None:
    rid = open_request(shared_pair)
    for missing in ("ground", "reason"):
        fields = {
            "kind": "refusal",
            "in_reply_to": rid,
            **C,
            "scope": "full",
            "ground": "security",
            "reason": "Исполнение может нанести ущерб безопасности.",
        }
        del fields[missing]
        r = post(shared_pair.by, "signatory", "/v1/messages", json=fields)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "document.missing_field" and r.json()["error"]["field"] == missing


def test_art6_full_refusal_ends_the_request(shared_pair) -> None:
    rid = open_request(shared_pair)
    reply(
        shared_pair.by,
        "refusal",
        rid,
        scope="full",
        ground="sovereignty",
        reason="Исполнение может нанести ущерб суверенитету.",
    )
    assert state_on_both(shared_pair, rid) == ("refused", "refused")
    r = post(
        shared_pair.by,
        "signatory",
        "/v1/messages",
        json={"kind": "execution_result", "in_reply_to": rid, **C, "summary": "Исполнено."},
    )
    assert r.status_code == 409


def test_art8_non_russian_free_text_is_rejected_naming_the_field(shared_pair) -> None:
    r = post(
        shared_pair.kz,
        "signatory",
        "/v1/messages",
        json=request_fields("BY", content="Please provide the bank statements for the account."),
    )
    assert r.status_code == 422
    assert r.json()["error"] == {**r.json()["error"], "code": "document.not_russian", "field": "content"}


def test_art4_missing_fields_are_rejected(shared_pair) -> None:
    fields = request_fields("BY")
    del fields["expected_execution_date"]
    r = post(shared_pair.kz, "signatory", "/v1/messages", json=fields)
    assert r.status_code == 422 and r.json()["error"]["field"] == "expected_execution_date"


def test_art4_clerk_drafts_and_only_a_signatory_sends(shared_pair) -> None:
    pair = shared_pair
    assert post(pair.kz, "clerk", "/v1/messages", json=request_fields("BY")).status_code == 403
    created = post(
        pair.kz,
        "clerk",
        "/v1/drafts",
        data={"document": __import__("json").dumps(request_fields("BY"), ensure_ascii=False)},
        files=[("attachments", ("справка.txt", "Справка".encode()))],
    )
    assert created.status_code == 201, created.text
    draft_id = created.json()["id"]
    assert get(pair.kz, "clerk", f"/v1/drafts/{draft_id}")["attachments"][0]["name"] == "справка.txt"
    assert post(pair.kz, "clerk", f"/v1/drafts/{draft_id}/sign").status_code == 403
    signed = post(pair.kz, "signatory", f"/v1/drafts/{draft_id}/sign")
    assert signed.status_code == 200, signed.text
    mid = signed.json()["message_id"]
    wait_status(pair.kz, mid)
    content = get(pair.by, "reader", f"/v1/messages/in/{mid}/content", params=PURPOSE)
    assert content["document"]["attachments"][0]["name"] == "справка.txt"
    assert post(pair.kz, "signatory", f"/v1/drafts/{draft_id}/sign").status_code == 409


def test_art4_signatory_whose_authorisation_expired_cannot_sign(shared_pair) -> None:
    settings = Settings.load(shared_pair.kz.data_dir)
    today = datetime.now(UTC).date()
    old = add_signatory(
        settings.data_dir,
        "Бывший подписант",
        "прокурор",
        today - timedelta(days=400),
        today - timedelta(days=35),
        datetime.now(UTC) - timedelta(days=30),
    )
    engine = make_engine(settings.database_url)
    _, token = create_user(
        engine, "Бывший подписант", "signatory", datetime.now(UTC), signatory_key_id=old.key.key_id
    )
    engine.dispose()
    shared_pair.kz.tokens["expired"] = token
    r = post(shared_pair.kz, "expired", "/v1/messages", json=request_fields("BY"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "trust.authorisation_not_valid"


def test_art4_urgent_request_original_dispatched_and_received(shared_pair) -> None:
    pair = shared_pair
    rid = open_request(pair, urgent=True)
    for p in (pair.kz, pair.by):
        original = get(p, "reader", f"/v1/requests/{rid}")["original"]
        assert original["owed_by"] == "KZ" and original["received_on"] is None
    today = date.today().isoformat()
    sent = send(
        pair.kz,
        {
            "kind": "original_dispatched",
            "request_id": rid,
            "thread_id": rid,
            **C,
            "dispatched_on": today,
            "tracking_number": "RR123456789KZ",
        },
    )
    wait_status(pair.kz, sent["id"])
    assert get(pair.by, "reader", f"/v1/requests/{rid}")["original"]["tracking_number"] == "RR123456789KZ"
    got = send(
        pair.by,
        {
            "kind": "original_received",
            "request_id": rid,
            "thread_id": rid,
            **C,
            "received_on": today,
            "matches_electronic": True,
            "note": "",
        },
    )
    wait_status(pair.by, got["id"])
    for p in (pair.kz, pair.by):
        original = get(p, "reader", f"/v1/requests/{rid}")["original"]
        assert original["received_on"] == today and original["matches_electronic"] is True


def test_art4_overdue_original_is_listed(shared_pair) -> None:
    pair = shared_pair
    rid = open_request(pair, urgent=True)
    engine = make_engine(Settings.load(pair.kz.data_dir).database_url)
    with session_scope(engine) as s:  # as if the due date had passed
        row = s.get(Original, rid)
        row.due_on = date.today() - timedelta(days=1)
        s.add(row)
    engine.dispose()
    overdue = get(pair.kz, "operator", "/v1/originals", params={"overdue": "true"})["originals"]
    assert rid in [o["request_id"] for o in overdue]
    assert rid not in [
        o["request_id"]
        for o in get(pair.by, "operator", "/v1/originals", params={"overdue": "true"})["originals"]
    ]


def test_art4_spontaneous_information_without_a_request(shared_pair) -> None:
    sent = send(
        shared_pair.by,
        {
            "kind": "spontaneous_information",
            "recipient_party": "KZ",
            **C,
            "content": "Получены сведения о перемещении подозреваемого.",
            "purpose": "Розыск подозреваемого по уголовному делу.",
            "direction": "other_crime",
            "form": "crime_information",
            "purpose_code": "criminal_investigation",
            "case_number": "2026-0451",
        },
    )
    wait_status(shared_pair.by, sent["id"])
    threads = get(shared_pair.kz, "reader", "/v1/requests", params={"kind": "spontaneous_information"})[
        "requests"
    ]
    assert sent["id"] in [t["id"] for t in threads]
    doc = get(shared_pair.kz, "reader", f"/v1/messages/in/{sent['id']}/content", params=PURPOSE)["document"]
    assert doc["purpose"] == "Розыск подозреваемого по уголовному делу."


def test_art10_consultation_thread(shared_pair) -> None:
    first = send(
        shared_pair.kz,
        {
            "kind": "consultation",
            "recipient_party": "BY",
            **C,
            "subject": "Толкование статьи 7 Соглашения",
            "text": "Предлагаем обсудить.",
        },
    )
    wait_status(shared_pair.kz, first["id"])
    answer = reply(
        shared_pair.by, "consultation", first["id"], subject="Ответ", text="Согласны, предлагаем дату."
    )
    steps = get(shared_pair.kz, "reader", f"/v1/requests/{first['id']}/timeline")["steps"]
    assert [s["message_id"] for s in steps] == [first["id"], answer["id"]]


def test_art11_directory_change_reaches_the_peer(shared_pair) -> None:
    def directory(version: int, phone: str) -> dict[str, Any]:
        return {
            "kind": "directory_update",
            "recipient_party": "BY",
            **C,
            "version": version,
            "coordinating_unit": {
                "name": "Департамент международного сотрудничества",
                "address": "г. Астана, ул. Орынбор, 14",
            },
            "contacts": [
                {
                    "name": "Иванов Иван Иванович",
                    "position": "прокурор отдела",
                    "phone": phone,
                    "email": "ivanov@prokuratura.kz",
                }
            ],
        }

    for version, phone in ((1, "+7 7172 000001"), (2, "+7 7172 000002")):
        sent = send(shared_pair.kz, directory(version, phone))
        wait_status(shared_pair.kz, sent["id"])
    seen = get(shared_pair.by, "reader", "/v1/directory/KZ")
    assert seen["current"]["version"] == 2
    assert seen["current"]["directory"]["contacts"][0]["phone"] == "+7 7172 000002"
    assert [h["version"] for h in seen["history"]] == [1, 2]
    stale = post(shared_pair.kz, "signatory", "/v1/messages", json=directory(2, "+7 7172 000003"))
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "lifecycle.directory_not_newer"


def test_wrong_role_gets_403_with_a_code(shared_pair) -> None:
    r = post(shared_pair.kz, "reader", "/v1/messages", json=request_fields("BY"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.wrong_role"
    with shared_pair.kz.client("operator") as c:
        r = c.get("/v1/requests", headers={"authorization": "Bearer plk_not-a-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.bad_token"


def test_art14_after_termination_new_requests_are_refused_but_pending_ones_are_answered(make_pair) -> None:
    pair = make_pair("sqlite")
    pair.start()
    rid = open_request(pair)
    reply(pair.by, "acceptance", rid)
    # A notice received today: 60 days count down, cooperation goes on meanwhile.
    today = date.today()
    r = post(
        pair.kz,
        "operator",
        "/v1/admin/agreement/termination",
        json={"received_on": today.isoformat(), "given_by": "BY"},
    )
    assert r.status_code == 201, r.text
    agreement = get(pair.kz, "reader", "/v1/agreement")
    assert agreement["state"] == "termination_pending"
    assert agreement["ends_on"] == (today + timedelta(days=60)).isoformat()
    open_request(pair)  # still allowed while pending
    # The notice had in fact been received 61 days ago: the agreement has ended.
    received_on = (date.today() - timedelta(days=61)).isoformat()
    for p, given_by in ((pair.kz, "BY"), (pair.by, "BY")):
        r = post(
            p,
            "operator",
            "/v1/admin/agreement/termination",
            json={"received_on": received_on, "given_by": given_by},
        )
        assert r.status_code == 201, r.text
        assert get(p, "reader", "/v1/agreement")["state"] == "terminated"
    r = post(pair.kz, "signatory", "/v1/messages", json=request_fields("BY"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "lifecycle.agreement_terminated"
    reply(pair.by, "execution_result", rid, summary="Исполнено до прекращения обязательств.")
    assert state_on_both(pair, rid) == ("executed", "executed")
    # The receiving node refuses a new request too, with a signed rejection.
    rejected = deliver(pair.kz, pair.by, craft_envelope(pair.kz, pair.by))
    assert (
        rejected.status_code == 409 and rejected.json()["error"]["code"] == "lifecycle.agreement_terminated"
    )


def test_art14_agreement_is_in_force_while_no_notice_is_recorded(shared_pair) -> None:
    agreement = get(shared_pair.kz, "reader", "/v1/agreement")
    assert agreement["state"] == "in_force" and agreement["ends_on"] is None

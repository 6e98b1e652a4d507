"""Article 7 on two real nodes: purpose-bound, confidential use of received data, consent by signed
message."""

from __future__ import annotations

import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.auth import create_user
from service.case_models import Consent
from service.db import make_engine, session_scope
from service.models import Event
from service.settings import Settings
from tests.integration.helpers import PURPOSE, request_fields, send, wait_for, wait_status

pytestmark = pytest.mark.integration

C = {"confidentiality": "confidential"}
MARKER = "Маркер-Совершенно-Секретного-Содержания-7731"
OTHER = {"purpose_code": "crime_prevention", "case_number": "2026-0777"}


def engine_of(p):  # type: ignore[no-untyped-def]
    return make_engine(Settings.load(p.data_dir).database_url)


def user(p, name: str, role: str, clearance: str) -> str:
    engine = engine_of(p)
    _, token = create_user(engine, name, role, datetime.now(UTC), clearance=clearance)
    engine.dispose()
    p.tokens[name] = token
    return name


def get(p, who: str, path: str, **params: Any):  # type: ignore[no-untyped-def]
    with p.client(who) as c:
        return c.get(path, params=params)


@pytest.fixture(scope="module")
def exchange(shared_pair) -> dict[str, Any]:
    """KZ asked (criminal investigation, case 2026-0451); BY answered with a confidential result that may not
    be used in court without its consent."""
    pair = shared_pair
    sent = send(pair.kz, request_fields("BY"))
    wait_status(pair.kz, sent["id"])
    for kind, extra in (
        ("acceptance", {}),
        (
            "execution_result",
            {
                "summary": f"Исполнено. {MARKER}",
                "handling": {
                    "no_court_use_without_consent": True,
                    "no_onward_transfer_without_consent": True,
                    "conditions": ["Не передавать третьим лицам."],
                },
            },
        ),
    ):
        msg = send(pair.by, {"kind": kind, "in_reply_to": sent["id"], **C, **extra})
        wait_status(pair.by, msg["id"])
    return {"pair": pair, "request": sent["id"], "result": msg["id"]}


def ask_and_answer(pair, item: str, answer: dict[str, Any], use: dict[str, str] = OTHER) -> str:  # type: ignore[no-untyped-def]
    with pair.kz.client("reader") as c:
        r = c.post(
            "/v1/consents",
            json={
                "item_id": item,
                **use,
                "requested_purpose": "Профилактика аналогичных преступлений.",
                "justification": "Сведения нужны для предупреждения новых эпизодов.",
            },
        )
    assert r.status_code == 201, r.text
    with pair.kz.client("signatory") as c:
        signed = c.post(f"/v1/drafts/{r.json()['draft_id']}/sign")
    assert signed.status_code == 200, signed.text
    consent_id = signed.json()["message_id"]
    wait_status(pair.kz, consent_id)
    reply = send(pair.by, {"in_reply_to": consent_id, "consent_request_id": consent_id, **C, **answer})
    wait_status(pair.by, reply["id"])
    return consent_id


def test_art7_read_with_the_bound_purpose_is_allowed(exchange) -> None:
    r = get(exchange["pair"].kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **PURPOSE)
    assert r.status_code == 200
    assert MARKER in r.json()["document"]["summary"]
    assert r.json()["document"]["handling"]["no_court_use_without_consent"] is True


def test_art7_read_without_a_stated_purpose_is_refused(exchange) -> None:
    r = get(exchange["pair"].kz, "reader", f"/v1/messages/in/{exchange['result']}/content")
    assert r.status_code == 422 and r.json()["error"]["code"] == "policy.purpose_required"


def test_art7_read_for_other_purpose_is_refused_without_consent(exchange) -> None:
    r = get(exchange["pair"].kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **OTHER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy.purpose_not_allowed"
    other_case = {**PURPOSE, "case_number": "2026-9999"}
    r = get(exchange["pair"].kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **other_case)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy.purpose_not_allowed"


def test_art7_court_use_needs_consent_when_the_provider_said_so(exchange) -> None:
    court = {"purpose_code": "court_proceedings", "case_number": "2026-0451"}
    r = get(exchange["pair"].kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **court)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy.handling_no_court_use"


def test_art7_clearance_below_the_level_refuses_even_with_the_right_purpose(exchange) -> None:
    low = user(exchange["pair"].kz, "low-reader", "reader", "official_use")
    r = get(exchange["pair"].kz, low, f"/v1/messages/in/{exchange['result']}/content", **PURPOSE)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy.insufficient_clearance"


def test_art7_listing_as_a_low_clearance_user_leaks_no_content_or_subject(exchange) -> None:
    pair = exchange["pair"]
    low = user(pair.kz, "low-lister", "reader", "unrestricted")
    messages = get(pair.kz, low, "/v1/messages", direction="in").json()["messages"]
    mine = [m for m in messages if m["id"] == exchange["result"]]
    assert mine == [
        {
            "id": exchange["result"],
            "direction": "in",
            "peer": "BY",
            "created_at": mine[0]["created_at"],
            "restricted": True,
        }
    ]
    one = get(pair.kz, low, f"/v1/messages/in/{exchange['result']}").json()
    assert set(one) == {"id", "direction", "peer", "created_at", "restricted"}
    threads = get(pair.kz, low, "/v1/requests").json()["requests"]
    assert all(set(t) == {"id", "peer", "opened_at", "restricted"} for t in threads)


def test_art7_download_and_export_are_reads(exchange) -> None:
    pair = exchange["pair"]
    path = f"/v1/messages/in/{exchange['result']}/export"
    assert get(pair.kz, "reader", path).status_code == 422
    assert get(pair.kz, "reader", path, **OTHER).status_code == 403
    r = get(pair.kz, "reader", path, **PURPOSE)
    assert r.status_code == 200 and r.json()["signed_document"]["payloadType"].endswith("document+json")
    transfer = get(pair.kz, "reader", path, operation="transfer", **PURPOSE)
    assert (
        transfer.status_code == 403
        and transfer.json()["error"]["code"] == "policy.handling_no_onward_transfer"
    )


def test_art7_read_allowed_after_consent_arrives_then_scoped_expiring_and_withdrawable(exchange) -> None:
    pair, item = exchange["pair"], exchange["result"]
    until = (date.today() + timedelta(days=30)).isoformat()
    consent_id = ask_and_answer(
        pair, item, {"kind": "consent_granted", "valid_until": until, "case_number": OTHER["case_number"]}
    )
    wait_for(
        "consent on KZ",
        lambda: (
            get(pair.kz, "reader", "/v1/consents").json()["consents"]
            and any(
                c["id"] == consent_id and c["status"] == "granted"
                for c in get(pair.kz, "reader", "/v1/consents").json()["consents"]
            )
        ),
    )
    r = get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **OTHER)
    assert r.status_code == 200 and r.json()["consent_relied_on"] == consent_id
    # scoped to its case
    r = get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **{**OTHER, "case_number": "2026-0888"})
    assert r.status_code == 403
    # expired: as if its end date had passed
    engine = engine_of(pair.kz)
    with session_scope(engine) as s:
        row = s.get(Consent, consent_id)
        row.valid_until, saved = date.today() - timedelta(days=1), row.valid_until
        s.add(row)
    assert get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **OTHER).status_code == 403
    with session_scope(engine) as s:
        row = s.get(Consent, consent_id)
        row.valid_until = saved
        s.add(row)
    assert get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **OTHER).status_code == 200
    # withdrawn by the provider, for future use
    withdrawn = send(
        pair.by,
        {
            "kind": "consent_withdrawn",
            "in_reply_to": consent_id,
            "consent_request_id": consent_id,
            **C,
            "reason": "Обстоятельства изменились.",
        },
    )
    wait_status(pair.by, withdrawn["id"])
    assert get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **OTHER).status_code == 403
    engine.dispose()


def test_art7_refused_consent_changes_nothing(exchange) -> None:
    pair, item = exchange["pair"], exchange["result"]
    use = {"purpose_code": "statistics", "case_number": "2026-0001"}
    consent_id = ask_and_answer(pair, item, {"kind": "consent_refused", "reason": "Не согласны."}, use)
    consents = {c["id"]: c for c in get(pair.kz, "reader", "/v1/consents").json()["consents"]}
    assert consents[consent_id]["status"] == "refused"
    assert get(pair.kz, "reader", f"/v1/messages/in/{item}/content", **use).status_code == 403


def test_art7_every_read_and_refusal_is_audited_without_content(exchange) -> None:
    pair = exchange["pair"]
    get(pair.kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **PURPOSE)
    get(pair.kz, "reader", f"/v1/messages/in/{exchange['result']}/content", **OTHER)
    engine = engine_of(pair.kz)
    with session_scope(engine, readonly=True) as s:
        events = (
            s.execute(
                select(Event).where(
                    Event.object_id == exchange["result"], Event.type.in_(("data.use", "data.use_refused"))
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    allowed = [e for e in events if e.type == "data.use"]
    refused = [e for e in events if e.type == "data.use_refused"]
    assert allowed and refused
    detail = allowed[-1].detail
    for key in (
        "operation",
        "stated_purpose",
        "stated_case",
        "bound_purpose",
        "bound_case",
        "handling",
        "consent",
        "envelope_sha256",
    ):
        assert key in detail
    assert detail["operation"] == "consult" and detail["bound_purpose"] == "criminal_investigation"
    assert all(MARKER not in str(e.detail) for e in events)


def test_art7_the_database_file_holds_no_plaintext_of_a_received_document(exchange) -> None:
    pair = exchange["pair"]
    files = [f for f in Path(pair.kz.data_dir).glob("node.db*")]
    assert files
    for f in files:
        assert MARKER.encode() not in f.read_bytes()


@pytest.mark.postgres
def test_art7_a_postgresql_dump_holds_no_plaintext_of_a_received_document(make_pair) -> None:
    pair = make_pair("postgres")
    pair.start()
    sent = send(pair.kz, request_fields("BY", content=f"Просим сведения. {MARKER}"))
    wait_status(pair.kz, sent["id"])
    assert (
        MARKER
        in get(pair.by, "reader", f"/v1/messages/in/{sent['id']}/content", **PURPOSE).json()["document"][
            "content"
        ]
    )
    url = Settings.load(pair.by.data_dir).database_url.replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(["pg_dump", "--data-only", url], capture_output=True, check=True).stdout
    assert len(dump) > 1000 and MARKER.encode() not in dump

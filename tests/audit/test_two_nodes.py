"""Two real nodes (``prolink serve`` processes over mutual TLS) witness each other's audit logs.

During an ordinary exchange each node signs heads (every second here) and the
other cosigns them; an export taken through the admin API verifies offline
with the two bundles and names BY's cosignature. Then KZ is stopped, its log
is cut back and rewritten in its database, and KZ is started again: BY refuses
KZ's next head with ``audit.inconsistent_head``, logs an error and records the
alert in its table and in its own audit log.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from protocol import parse_note
from service.audit_export import load_bundle, verify_file
from service.db import make_engine, session_scope
from service.demo import DemoParty
from service.models import AuditAlert, AuditCosignature, AuditHead, Event
from service.settings import Settings
from tests.audit.test_witness import rewrite_history
from tests.integration.helpers import request_fields, send, wait_for, wait_status

pytestmark = pytest.mark.integration

FAST = {"audit_head_interval_seconds": 1.0}


def db(p: DemoParty):  # type: ignore[no-untyped-def]
    return make_engine(Settings.load(p.data_dir).database_url)


def log_size(p: DemoParty) -> int:
    eng = db(p)
    try:
        with session_scope(eng, readonly=True) as s:
            return len(s.execute(select(Event.seq)).scalars().all())
    finally:
        eng.dispose()


def cosigned_sizes(p: DemoParty, by: str) -> list[int]:
    eng = db(p)
    try:
        with session_scope(eng, readonly=True) as s:
            query = select(AuditCosignature.head_size).where(AuditCosignature.party == by)
            return sorted(s.execute(query).scalars())
    finally:
        eng.dispose()


def alerts(p: DemoParty) -> list[AuditAlert]:
    eng = db(p)
    try:
        with session_scope(eng, readonly=True) as s:
            return list(s.execute(select(AuditAlert)).scalars())
    finally:
        eng.dispose()


def test_heads_are_cosigned_during_an_exchange_and_the_export_verifies(  # type: ignore[no-untyped-def]
    make_pair, backend, tmp_path: Path
) -> None:
    pair = make_pair(backend, **FAST)
    pair.start()
    sent = send(pair.kz, request_fields("BY"))
    wait_status(pair.kz, sent["id"])
    # The events of the exchange (sealed on KZ; received and receipt issued on BY) get into cosigned heads.
    for p, other in ((pair.kz, "BY"), (pair.by, "KZ")):
        size = log_size(p)
        wait_for(
            f"{p.party}'s head of size >= {size} cosigned by {other}",
            lambda p=p, other=other, size=size: any(s >= size for s in cosigned_sizes(p, other)),
            30,
        )
    with pair.kz.client("operator") as c:
        heads = c.get("/v1/admin/audit/heads").json()
        assert "BY" in heads["head"]["cosigned_by"] or cosigned_sizes(pair.kz, "BY")
        r = c.get("/v1/admin/audit/export", params={"format": "jsonl"})
        assert r.status_code == 200, r.text
        with pair.kz.client("clerk") as clerk:
            assert clerk.get("/v1/admin/audit/export").json()["error"]["code"] == "auth.wrong_role"
    export = tmp_path / "kz.jsonl"
    export.write_bytes(r.content)
    bundles = {}
    for p in (pair.kz, pair.by):
        (tmp_path / f"{p.party}.json").write_bytes((p.data_dir / "keys" / "bundle.json").read_bytes())
        bundles[p.party] = load_bundle(tmp_path / f"{p.party}.json")
    report = verify_file(export, bundles)
    assert any(party == "BY" for party, _, _ in report.witnesses())
    entries = [line for line in r.content.split(b"\n") if line and not line.startswith(b'{"record":')]
    assert any(b'"type":"message.sealed"' in e and sent["id"].encode() in e for e in entries)
    assert entries[-1].find(b'"type":"audit.exported"') > 0  # the export recorded itself
    assert alerts(pair.by) == [] and alerts(pair.kz) == []


def test_a_node_whose_log_was_rolled_back_and_rewritten_is_caught_by_its_peer(make_pair, backend) -> None:  # type: ignore[no-untyped-def]
    pair = make_pair(backend, **FAST)
    pair.start()
    for _ in range(3):
        wait_status(pair.kz, send(pair.kz, request_fields("BY"))["id"])
    size = log_size(pair.kz)
    wait_for("BY to cosign KZ's log", lambda: any(s >= size for s in cosigned_sizes(pair.kz, "BY")), 30)
    witnessed = max(cosigned_sizes(pair.kz, "BY"))
    pair.stop(pair.kz)

    # An insider edits KZ's database while the node is stopped: keep the first entries, drop the rest
    # (and KZ's own record of the heads BY cosigned), and append other entries in their place.
    from service.server import build_node

    node = build_node(pair.kz.data_dir)
    try:
        rewrite_history(node, keep=3, new_events=witnessed + 2)
        with session_scope(node.engine, readonly=True) as s:
            assert max(s.execute(select(AuditHead.size)).scalars(), default=0) <= 3
    finally:
        node.engine.dispose()

    pair.start(pair.kz)
    found = wait_for("BY's alert", lambda: [a for a in alerts(pair.by) if a.party == "KZ"], 30)
    alert = found[0]
    assert alert.code == "audit.inconsistent_head"
    assert alert.evidence["accepted_size"] >= witnessed - 0 and alert.evidence["offered_size"] > 3
    assert "rolled back or rewritten" in alert.message
    # The evidence holds both heads signed by KZ: the one BY cosigned and the one contradicting it.
    assert parse_note(alert.evidence["accepted_checkpoint"].encode()).text.startswith(b"prolink.kz/audit\n")
    # BY recorded the alert in its own log and its node log says so.
    eng = db(pair.by)
    try:
        with session_scope(eng, readonly=True) as s:
            types = s.execute(select(Event.type).where(Event.party == "KZ")).scalars().all()
    finally:
        eng.dispose()
    assert "audit.alert" in types
    assert "audit_alert" in pair.log(pair.by)
    with pair.by.client("operator") as c:
        listed = c.get("/v1/admin/audit/alerts").json()["alerts"]
    assert listed and listed[0]["code"] == "audit.inconsistent_head"
    # KZ's rewritten heads are never cosigned, and KZ logs that BY refused them.
    time.sleep(2.5)
    assert all(s <= 3 for s in cosigned_sizes(pair.kz, "BY"))
    assert "audit_head_refused_by_peer" in pair.log(pair.kz)
    # The exchange itself goes on (the alarm is for people to act on).
    with httpx.Client(base_url=pair.kz.api, timeout=10) as c:
        assert c.get("/healthz").status_code == 200

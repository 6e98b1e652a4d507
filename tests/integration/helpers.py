"""Helpers for the two-node tests: craft envelopes as a Party, talk to a peer API directly, count rows."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

import protocol
from keys import client_ssl_context, export_bundle, list_signatories, load_identity, load_signatory
from service.db import make_engine, session_scope
from service.demo import DemoParty
from service.models import Blob, BlobChunk, Message, Outbox
from service.settings import Settings

REQUEST_FIELDS: dict[str, Any] = {
    "kind": "request",
    "urgent": False,
    "grounds": "Уголовное дело № 2026-0451 о мошенничестве.",
    "purpose": "Установление владельца банковского счёта.",
    "content": "Просим предоставить сведения о владельце счёта и выписку операций.",
    "other_information": "Нет.",
    "direction": "economic_crime",
    "form": "crime_information",
    "confidentiality": "confidential",
    "purpose_code": "criminal_investigation",
    "case_number": "2026-0451",
}
#: The use stated when reading items bound to REQUEST_FIELDS' purpose (Art. 7).
PURPOSE = {"purpose_code": "criminal_investigation", "case_number": "2026-0451"}


def request_fields(recipient: str, **extra: Any) -> dict[str, Any]:
    due = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    return {**REQUEST_FIELDS, "recipient_party": recipient, "expected_execution_date": due, **extra}


def trusted(p: DemoParty) -> protocol.TrustedParty:
    bundle, fp = export_bundle(p.data_dir)
    return protocol.verify_bundle(bundle, expected_fingerprint=fp)


def craft_envelope(
    sender: DemoParty,
    recipient: DemoParty,
    now: datetime | None = None,
    message_id: str | None = None,
    content: str | None = None,
    document: dict[str, Any] | None = None,
) -> bytes:
    """An envelope sealed by ``sender``'s real node keys and signatory, outside its node.

    By default it carries a new request; ``document`` gives other fields (kind, thread...) instead.
    """
    now = now or datetime.now(UTC)
    identity = load_identity(sender.data_dir)
    signatory = load_signatory(sender.data_dir, list_signatories(sender.data_dir)[0].key.key_id)
    mid = message_id or str(uuid.uuid4())
    if document is None:
        fields = request_fields(recipient.party, **({"content": content} if content else {}))
        document = {
            **fields,
            "thread_id": mid,
            "requesting_party": sender.party,
            "requested_party": recipient.party,
            "expected_execution_date": (now.date() + timedelta(days=30)).isoformat(),
        }
    doc = protocol.parse_document(
        {
            **document,
            "id": mid,
            "sender_party": sender.party,
            "recipient_party": recipient.party,
            "created_at": now.isoformat(),
            "language": "ru",
        }
    )
    signed = protocol.sign_document(doc, signatory.key)
    return protocol.seal(signed, signatory.authorisation, [], identity.node_keys, trusted(recipient), now)


def peer_client(sender: DemoParty, recipient: DemoParty) -> httpx.Client:
    """A mutual-TLS client presenting ``sender``'s node certificate to ``recipient``'s peer API."""
    ctx = client_ssl_context(load_identity(sender.data_dir), trusted(recipient).bundle.tls_ca_pem)
    return httpx.Client(base_url=recipient.url, verify=ctx, timeout=30.0)


def deliver(sender: DemoParty, recipient: DemoParty, envelope: bytes) -> httpx.Response:
    with peer_client(sender, recipient) as c:
        return c.post(
            "/v1/envelopes", content=envelope, headers={"content-type": "application/vnd.prolink.envelope"}
        )


def row_counts(p: DemoParty) -> dict[str, int]:
    engine = make_engine(Settings.load(p.data_dir).database_url)
    try:
        with session_scope(engine, readonly=True) as s:
            return {
                t.__name__: s.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (Message, Blob, BlobChunk, Outbox)
            }
    finally:
        engine.dispose()


def messages(p: DemoParty, direction: str) -> list[Message]:
    engine = make_engine(Settings.load(p.data_dir).database_url)
    try:
        with session_scope(engine, readonly=True) as s:
            return list(s.execute(select(Message).where(Message.direction == direction)).scalars())
    finally:
        engine.dispose()


def send(
    p: DemoParty, fields: dict[str, Any], files: list[tuple[str, bytes]] | None = None
) -> dict[str, Any]:
    with p.client("signatory") as c:
        if files:
            r = c.post(
                "/v1/messages",
                data={"document": json.dumps(fields, ensure_ascii=False)},
                files=[("attachments", (name, data, "application/octet-stream")) for name, data in files],
            )
        else:
            r = c.post("/v1/messages", json=fields)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(
    p: DemoParty, message_id: str, status: str = "delivered", timeout: float = 60.0
) -> dict[str, Any]:
    with p.client("operator") as c:
        return wait_for(
            f"{message_id} {status}",  # type: ignore[no-any-return]
            lambda: (v := c.get(f"/v1/messages/out/{message_id}").json()).get("status") == status and v,
            timeout,
        )

"""Two real nodes over mutual TLS: exchange, rejections, TLS refusals (issue: two real nodes)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import ssl
import struct
from datetime import UTC, datetime, timedelta

import httpx
import pytest

import protocol
from keys import generate_identity, load_identity
from tests.integration.helpers import (
    PURPOSE,
    craft_envelope,
    deliver,
    messages,
    request_fields,
    row_counts,
    send,
    trusted,
    wait_status,
)

pytestmark = pytest.mark.integration


def test_request_with_attachment_and_result_round_trip(pair) -> None:
    attachment = os.urandom(3 * 1024 * 1024 + 17)
    sent = send(pair.kz, request_fields("BY"), files=[("выписка.pdf", attachment)])
    view = wait_status(pair.kz, sent["id"])
    assert view["receipt_status"] == "accepted" and view["receipt_verified"] is True
    # The sender's stored receipt verifies independently, from BY's public bundle alone.
    receipt = protocol.Signed.from_json(view["receipt"], what="receipt").to_bytes()
    rec = protocol.verify_receipt(
        receipt,
        trusted(pair.by),
        envelope_sha256=bytes.fromhex(view["envelope_sha256"]),
        message_id=sent["id"],
        sender="KZ",
    )
    assert rec.accepted

    with pair.by.client("reader") as c:
        content = c.get(f"/v1/messages/in/{sent['id']}/content", params=PURPOSE).json()
        assert content["document"]["purpose"] == "Установление владельца банковского счёта."
        assert content["signed_by"]["person"] == "Подписант KZ"
        got = c.get(f"/v1/messages/in/{sent['id']}/attachments/0", params=PURPOSE)
        assert got.status_code == 200
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(attachment).digest()

    accepted = send(
        pair.by, {"kind": "acceptance", "in_reply_to": sent["id"], "confidentiality": "confidential"}
    )
    wait_status(pair.by, accepted["id"])
    result = send(
        pair.by,
        {
            "kind": "execution_result",
            "in_reply_to": sent["id"],
            "confidentiality": "confidential",
            "summary": "Запрос исполнен, сведения прилагаются.",
        },
    )
    wait_status(pair.by, result["id"])
    with pair.kz.client("reader") as c:
        doc = c.get(f"/v1/messages/in/{result['id']}/content", params=PURPOSE).json()["document"]
    assert doc["thread_id"] == sent["id"] and doc["in_reply_to"] == sent["id"]


def test_received_envelope_is_stored_exactly_as_sent(pair) -> None:
    sent = send(pair.kz, request_fields("BY"))
    wait_status(pair.kz, sent["id"])
    inbound = {m.id: m for m in messages(pair.by, "in")}
    outbound = {m.id: m for m in messages(pair.kz, "out")}
    assert inbound[sent["id"]].envelope_sha256 == outbound[sent["id"]].envelope_sha256


def _rejected(pair, envelope: bytes, status: int, code: str) -> dict:
    before = row_counts(pair.by)
    r = deliver(pair.kz, pair.by, envelope)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert row_counts(pair.by) == before, "a rejected delivery changed what is stored"
    return body


def test_bad_signature_is_rejected_and_nothing_is_stored(pair) -> None:
    envelope = bytearray(craft_envelope(pair.kz, pair.by))
    envelope[-1] ^= 0x01
    body = _rejected(pair, bytes(envelope), 401, "envelope.bad_signature")
    # The rejection itself is signed by BY, for the exact bytes it got.
    receipt = protocol.Signed.from_json(body["receipt"], what="receipt").to_bytes()
    rec = protocol.verify_receipt(
        receipt,
        trusted(pair.by),
        envelope_sha256=hashlib.sha256(envelope).digest(),
        message_id=protocol.read_framing(bytes(envelope)).header.message_id,
        sender="KZ",
    )
    assert rec.status == "rejected" and rec.reason_code == "envelope.bad_signature"


def test_envelope_claiming_an_unknown_sender_is_rejected(pair, tmp_path) -> None:
    stranger = tmp_path / "ru"
    generate_identity(stranger, "RU", "Чужая сторона", "https://127.0.0.1:1", datetime.now(UTC))
    ident = load_identity(stranger)
    # Sealed by a stranger's node keys, delivered over KZ's (valid) TLS client certificate.
    envelope = craft_envelope(pair.kz, pair.by)
    framing = protocol.read_framing(envelope)
    forged_header = dataclasses.replace(
        framing.header, sender="RU", sender_key_id=ident.node_keys.signing.key_id
    )
    header_bytes = forged_header.to_bytes()
    forged = (
        protocol.MAGIC
        + struct.pack(">I", len(header_bytes))
        + header_bytes
        + envelope[len(protocol.MAGIC) + 4 + len(framing.header_bytes) :]
    )
    _rejected(pair, forged, 403, "envelope.unknown_sender")


def test_replay_outside_the_clock_window_is_rejected(pair) -> None:
    old = craft_envelope(pair.kz, pair.by, now=datetime.now(UTC) - timedelta(days=10))
    _rejected(pair, old, 400, "envelope.replayed")
    future = craft_envelope(pair.kz, pair.by, now=datetime.now(UTC) + timedelta(hours=1))
    _rejected(pair, future, 400, "envelope.replayed")


def test_redelivery_of_the_same_bytes_returns_the_stored_receipt(pair) -> None:
    envelope = craft_envelope(pair.kz, pair.by)
    first = deliver(pair.kz, pair.by, envelope)
    assert first.status_code == 200, first.text
    counts = row_counts(pair.by)
    second = deliver(pair.kz, pair.by, envelope)
    assert second.status_code == 200
    assert second.json()["receipt"] == first.json()["receipt"]
    assert row_counts(pair.by) == counts


def test_same_message_id_with_other_bytes_is_rejected_as_conflicting(pair) -> None:
    mid = "6b1f5a8e-8a38-4c55-9d36-2b6c1f0e9a01"
    assert deliver(pair.kz, pair.by, craft_envelope(pair.kz, pair.by, message_id=mid)).status_code == 200
    other = craft_envelope(pair.kz, pair.by, message_id=mid, content="Другое содержание запроса по делу.")
    _rejected(pair, other, 409, "envelope.conflicting_duplicate")


def test_malformed_envelope_is_rejected(pair) -> None:
    _rejected(pair, b"this is not an envelope at all", 400, "encoding.malformed")
    _rejected(pair, b"", 400, "encoding.malformed")
    envelope = craft_envelope(pair.kz, pair.by)
    _rejected(pair, envelope[:-100], 400, "encoding.malformed")


def test_oversize_envelope_is_rejected_before_it_is_read(make_pair) -> None:
    pair = make_pair("sqlite", max_envelope_bytes=64 * 1024)
    pair.start()
    big = craft_envelope(pair.kz, pair.by, content="Очень длинный запрос. " * 5000)
    assert len(big) > 64 * 1024
    _rejected(pair, big, 413, "envelope.too_large")


def _handshake(p, ctx: ssl.SSLContext) -> bytes:
    """Open a TLS connection to ``p``'s peer port and try one HTTP request; returns what came back.

    In TLS 1.3 the client finishes its side of the handshake before the server
    has checked the client certificate, so a refusal shows up either as an
    error or as the connection closing with nothing read: both mean b"".
    """
    try:
        with (
            socket.create_connection(("127.0.0.1", p.peer_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v1/ping HTTP/1.1\r\nhost: x\r\n\r\n")
            return tls.recv(1024)
    except (ssl.SSLError, ConnectionError, OSError):
        return b""


def _client_ctx(p) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trusted(p).bundle.tls_ca_pem)
    return ctx


def test_peer_port_without_client_certificate_gets_no_http_answer(pair) -> None:
    assert _handshake(pair.by, _client_ctx(pair.by)) == b""


def test_peer_port_with_a_strangers_certificate_gets_no_http_answer(pair, tmp_path) -> None:
    ident = generate_identity(
        tmp_path / "ru", "RU", "Чужая сторона", "https://127.0.0.1:1", datetime.now(UTC)
    )
    ctx = _client_ctx(pair.by)
    ctx.load_cert_chain(ident.tls_cert_path, ident.tls_key_path)
    assert _handshake(pair.by, ctx) == b""


def test_peer_port_refuses_tls_1_2(pair) -> None:
    ident = load_identity(pair.kz.data_dir)
    ctx = _client_ctx(pair.by)
    ctx.load_cert_chain(ident.tls_cert_path, ident.tls_key_path)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(pair.by, ctx) == b""


def test_peer_port_answers_a_known_peer(pair) -> None:
    ident = load_identity(pair.kz.data_dir)
    ctx = _client_ctx(pair.by)
    ctx.load_cert_chain(ident.tls_cert_path, ident.tls_key_path)
    assert _handshake(pair.by, ctx).startswith(b"HTTP/1.1 200")


def test_user_token_does_not_open_the_peer_port(pair) -> None:
    with pytest.raises((httpx.ConnectError, ssl.SSLError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(
            pair.by.url + "/v1/envelopes",
            headers={"authorization": f"Bearer {pair.by.tokens['operator']}"},
            verify=_client_ctx(pair.by),
            content=b"x",
        )


def test_an_endless_request_head_is_refused_and_the_node_keeps_serving(pair) -> None:
    """httptools alone would buffer it all (``service.http_head``): the user port needs no token to be
    sent one."""
    before = row_counts(pair.by)
    with socket.create_connection(("127.0.0.1", pair.by.user_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(64):
                sock.sendall(b"x-long: " + b"a" * (1024 * 1024) + b"\r\n")
        except OSError:  # the node closed the connection
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"request.headers_too_large"' in answer
    with pair.by.client("operator") as c:
        assert c.get("/healthz").status_code == 200
    assert row_counts(pair.by) == before

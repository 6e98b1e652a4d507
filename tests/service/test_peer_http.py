"""The peer API's HTTP stack (``service.server.http_protocols`` and ``loop_factory``), on real sockets.

Whichever protocol class serves the peer port (httptools where installed, h11
as the fallback), on whichever loop the node runs (uvloop where installed), the
app sees the DER of the client certificate the TLS handshake verified: the
node binds an envelope's sender to it. A CA that the key sync adds to the live
TLS context is trusted from the next connection on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keys import Identity, client_ssl_context, generate_identity, server_ssl_context
from keys._files import ScryptParams
from service.http_head import HEAD_TOO_LARGE_CODE, HeadLimitedHttpToolsProtocol, head_limited
from service.peer_api import PeerCertH11Protocol, PeerCertHttpToolsProtocol
from service.server import http_protocols, loop_factory
from tests.service.http_server import serving

PROTOCOLS = [PeerCertH11Protocol] + ([PeerCertHttpToolsProtocol] if PeerCertHttpToolsProtocol else [])


def _identity(tmp_path: Path, party: str) -> Identity:
    return generate_identity(
        tmp_path / party.lower(),
        party,
        f"{party} office",
        "https://127.0.0.1:9443",
        datetime.now(UTC),
        scrypt=ScryptParams(n=2**12),
    )


@pytest.fixture
def by(tmp_path: Path) -> Identity:
    return _identity(tmp_path, "BY")


@pytest.fixture
def kz(tmp_path: Path) -> Identity:
    return _identity(tmp_path, "KZ")


def _der(identity: Identity) -> bytes:
    return x509.load_pem_x509_certificate(identity.tls_cert_path.read_bytes()).public_bytes(Encoding.DER)


async def _whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the SHA-256 of the captured client certificate and the running loop's module."""
    der = scope["state"]["tls_peer_cert"]
    body = json.dumps(
        {
            "cert_sha256": hashlib.sha256(der).hexdigest() if der is not None else None,
            "loop": type(asyncio.get_running_loop()).__module__,
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serving(protocol: type[asyncio.Protocol], ctx: ssl.SSLContext) -> Any:
    """The protocol class behind mutual TLS on 127.0.0.1, on the node's loop, in a thread; yields the port."""
    return serving(_whoami, protocol, ctx)


def _ask(port: int, client: Identity, server: Identity) -> dict[str, Any] | None:
    """GET over mutual TLS with ``client``'s certificate; None if the server gave no HTTP answer."""
    try:
        with httpx.Client(verify=client_ssl_context(client, server.tls_ca_pem), timeout=5) as h:
            return h.get(f"https://127.0.0.1:{port}/").json()  # type: ignore[no-any-return]
    except (TimeoutError, httpx.TransportError, ssl.SSLError):
        return None


def test_httptools_and_uvloop_are_chosen_where_installed() -> None:
    pytest.importorskip("httptools")
    uvloop = pytest.importorskip("uvloop")
    peer, user = http_protocols()
    assert issubclass(peer, PeerCertHttpToolsProtocol)
    assert issubclass(user, HeadLimitedHttpToolsProtocol) and not issubclass(user, PeerCertHttpToolsProtocol)
    assert loop_factory() is uvloop.new_event_loop


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_app_sees_the_verified_client_certificate(
    protocol: type[asyncio.Protocol], by: Identity, kz: Identity
) -> None:
    with _serving(protocol, server_ssl_context(by, [kz.tls_ca_pem])) as port:
        answer = _ask(port, kz, by)
    assert answer is not None
    assert answer["cert_sha256"] == hashlib.sha256(_der(kz)).hexdigest()
    factory = loop_factory()
    assert answer["loop"] == (factory.__module__.split(".")[0] if factory else "asyncio.unix_events")


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_ca_added_to_the_live_context_is_trusted_from_the_next_connection(
    protocol: type[asyncio.Protocol], tmp_path: Path, by: Identity, kz: Identity
) -> None:
    ru = _identity(tmp_path, "RU")
    ctx = server_ssl_context(by, [kz.tls_ca_pem])
    with _serving(protocol, ctx) as port:
        assert _ask(port, ru, by) is None
        ctx.load_verify_locations(cadata=ru.tls_ca_pem)  # what the key sync does (``KeySync.refresh_tls``)
        answer = _ask(port, ru, by)
    assert answer is not None
    assert answer["cert_sha256"] == hashlib.sha256(_der(ru)).hexdigest()


@pytest.mark.skipif(PeerCertHttpToolsProtocol is None, reason="httptools is not installed")
def test_a_peer_cannot_send_an_endless_head(by: Identity, kz: Identity) -> None:
    """Behind mutual TLS too, a head past the bound gets 431 and the connection closes."""
    limit = 16 * 1024
    protocol = head_limited(PeerCertHttpToolsProtocol, limit)  # type: ignore[arg-type]
    with (
        _serving(protocol, server_ssl_context(by, [kz.tls_ca_pem])) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_ssl_context(kz, by.tls_ca_pem).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(16):
                tls.sendall(b"x-long: " + b"a" * (256 * 1024) + b"\r\n")
        except (ssl.SSLError, OSError):
            pass
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (ssl.SSLError, OSError):
            pass
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == HEAD_TOO_LARGE_CODE


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_stop_does_not_wait_for_a_peers_idle_kept_alive_connection(
    protocol: type[asyncio.Protocol], by: Identity, kz: Identity
) -> None:
    """A TLS close waits for the client's close_notify, which an idle pooled connection never sends: 30 s."""
    client = httpx.Client(verify=client_ssl_context(kz, by.tls_ca_pem), timeout=5)
    running = _serving(protocol, server_ssl_context(by, [kz.tls_ca_pem]))
    try:
        port = running.__enter__()
        assert client.get(f"https://127.0.0.1:{port}/").status_code == 200  # the connection stays in the pool
        started = time.monotonic()
        running.__exit__(None, None, None)  # should_exit, then the server thread is joined (10 s at most)
        assert time.monotonic() - started < 5
    finally:
        client.close()


def test_the_node_warns_when_it_falls_back_to_h11_which_has_no_timeouts(monkeypatch) -> None:
    from structlog.testing import capture_logs

    from service import server

    with capture_logs() as logs:
        server.warn_if_untimed(server.http_protocols()[0])
    assert not logs  # httptools is installed here: heads and bodies are timed out
    monkeypatch.setattr(server, "PeerCertHttpToolsProtocol", None)  # as where httptools is missing
    peer, user = server.http_protocols()
    assert (peer, user) == (PeerCertH11Protocol, server.H11Protocol)
    with capture_logs() as logs:
        server.warn_if_untimed(peer)
    assert [e["event"] for e in logs] == ["http_without_timeouts"]

"""Mutual TLS between two Parties' nodes, with real sockets on 127.0.0.1.

Each side trusts only the other's CA (from its bundle). A client without a
certificate, with a stranger's certificate, or limited to TLS 1.2 is refused.
"""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keys import Identity, client_ssl_context, generate_identity, server_ssl_context
from keys._files import ScryptParams
from protocol._errors import TrustError


@pytest.fixture
def now() -> datetime:
    """OpenSSL checks certificates against the real clock, so TLS identities are made "now"."""
    return datetime.now(UTC)


@pytest.fixture
def kz(tmp_path: Path, now: datetime) -> Identity:
    return generate_identity(
        tmp_path / "kz",
        "KZ",
        "KZ office",
        "https://kz.prolink.example:8443",
        now,
        scrypt=ScryptParams(n=2**12),
    )


@pytest.fixture
def by(tmp_path: Path, now: datetime) -> Identity:
    return generate_identity(
        tmp_path / "by", "BY", "BY office", "https://127.0.0.1:9443", now, scrypt=ScryptParams(n=2**12)
    )


def _serve_once(ctx: ssl.SSLContext) -> tuple[int, dict[str, Any], threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, Any] = {}

    def run() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer_cn"] = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
                result["version"] = tls.version()
                tls.sendall(b"hello " + tls.recv(100))
        except (ssl.SSLError, OSError) as exc:
            result["error"] = exc
            conn.close()
        finally:
            listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, result, thread


def _client(ctx: ssl.SSLContext, port: int, host: str = "127.0.0.1") -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"KZ")
        return tls.recv(100)  # TLS 1.3: a refused client certificate shows up here


def test_mutual_handshake(kz: Identity, by: Identity) -> None:
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    assert _client(client_ssl_context(kz, by.tls_ca_pem), port) == b"hello KZ"
    thread.join(5)
    assert result == {"peer_cn": "KZ", "version": "TLSv1.3"}


def test_server_name_is_checked(kz: Identity, by: Identity) -> None:
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    with pytest.raises(ssl.SSLCertVerificationError):
        _client(client_ssl_context(kz, by.tls_ca_pem), port, host="evil.example")
    thread.join(5)
    assert "error" in result


def test_client_without_certificate_is_refused(kz: Identity, by: Identity) -> None:
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cadata=by.tls_ca_pem)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client(bare, port)
    thread.join(5)
    assert isinstance(result.get("error"), ssl.SSLError)
    assert "peer_cn" not in result


def test_client_from_a_stranger_ca_is_refused(
    tmp_path: Path, kz: Identity, by: Identity, now: datetime
) -> None:
    stranger = generate_identity(
        tmp_path / "xx", "KZ", "Impostor", "https://127.0.0.1:1", now, scrypt=ScryptParams(n=2**12)
    )
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client(client_ssl_context(stranger, by.tls_ca_pem), port)
    thread.join(5)
    assert isinstance(result.get("error"), ssl.SSLError)


def test_client_limited_to_tls12_is_refused(kz: Identity, by: Identity) -> None:
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    old = client_ssl_context(kz, by.tls_ca_pem, allow_tls12=True)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _client(old, port)
    thread.join(5)
    assert isinstance(result.get("error"), ssl.SSLError)


def test_tls12_only_when_allowed(kz: Identity, by: Identity) -> None:
    port, result, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem], allow_tls12=True))
    old = client_ssl_context(kz, by.tls_ca_pem, allow_tls12=True)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _client(old, port) == b"hello KZ"
    thread.join(5)
    assert result["version"] == "TLSv1.2"


def test_contexts_are_strict(kz: Identity, by: Identity) -> None:
    server = server_ssl_context(by, [kz.tls_ca_pem])
    client = client_ssl_context(kz, by.tls_ca_pem)
    for ctx in (server, client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert client.check_hostname
    # only the peer's CA is trusted, never the system store
    assert [dict(x[0] for x in c["subject"])["commonName"] for c in server.get_ca_certs()] == [
        "prolink KZ TLS CA"
    ]
    assert [dict(x[0] for x in c["subject"])["commonName"] for c in client.get_ca_certs()] == [
        "prolink BY TLS CA"
    ]
    with pytest.raises(TrustError) as exc:
        server_ssl_context(by, [])
    assert exc.value.code == "trust.no_peer_ca"
    alone = server_ssl_context(by, [], allow_no_peer=True)  # a node before its first peer: trusts no one yet
    assert alone.verify_mode == ssl.CERT_REQUIRED and alone.get_ca_certs() == []
    with pytest.raises(TrustError) as exc:
        client_ssl_context(kz, "not a pem")
    assert exc.value.code == "trust.bad_tls_ca"


def test_encrypted_tls_key(tmp_path: Path, kz: Identity, now: datetime) -> None:
    locked = generate_identity(
        tmp_path / "locked",
        "BY",
        "Belarus",
        "https://localhost:9443",
        now,
        passphrase="s3cret",
        scrypt=ScryptParams(n=2**12),
    )
    assert locked.tls_key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED " + b"PRIVATE KEY-----")
    port, result, thread = _serve_once(server_ssl_context(locked, [kz.tls_ca_pem]))
    assert _client(client_ssl_context(kz, locked.tls_ca_pem), port, host="localhost") == b"hello KZ"
    thread.join(5)
    assert result["peer_cn"] == "KZ"


def test_peer_party_maps_a_client_certificate_to_its_party(
    tmp_path: Path, kz: Identity, by: Identity, now: datetime
) -> None:
    from keys import import_bundle, peer_party

    kz_peer = import_bundle(kz.bundle_bytes(), kz.fingerprint)
    by_peer = import_bundle(by.bundle_bytes(), by.fingerprint)
    port, _, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    ctx = client_ssl_context(kz, by.tls_ca_pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        server_der = tls.getpeercert(binary_form=True)
        tls.sendall(b"x")
        tls.recv(100)
    thread.join(5)
    assert server_der is not None
    assert peer_party(server_der, [kz_peer, by_peer]) is by_peer
    with pytest.raises(TrustError) as exc:
        peer_party(server_der, [kz_peer])
    assert exc.value.code == "trust.unknown_peer"


def test_renew_tls_cert(kz: Identity, by: Identity, now: datetime) -> None:
    from keys import load_identity, renew_tls_cert

    old = kz.tls_cert_path.read_bytes()
    bundle = kz.bundle_bytes()
    renew_tls_cert(kz.data_dir, now + timedelta(minutes=1))
    assert kz.tls_cert_path.read_bytes() != old
    assert kz.bundle_bytes() == bundle  # the peer needs nothing new
    assert oct(kz.tls_key_path.stat().st_mode & 0o777) == "0o600"
    port, _, thread = _serve_once(server_ssl_context(by, [kz.tls_ca_pem]))
    renewed = load_identity(kz.data_dir)
    assert _client(client_ssl_context(renewed, by.tls_ca_pem), port) == b"hello KZ"
    thread.join(5)

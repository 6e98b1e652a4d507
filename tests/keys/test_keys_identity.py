"""A Party's identity: layout, modes, loading, the TLS CA and node certificate."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys import (
    Identity,
    IdentityError,
    KeyFileError,
    ScryptParams,
    export_bundle,
    generate_identity,
    load_identity,
)
from protocol._errors import TrustError
from protocol._primitives import CLASSIC, PQ_HYBRID
from protocol._trust import fingerprint

CHEAP = ScryptParams(n=2**12)
PRIVATE = ["root.key", "tls-ca.key", "tls-key.pem"]
PUBLIC = ["identity.json", "bundle.json", "tls-ca.pem", "tls-cert.pem"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_layout_and_modes(kz: Identity, kz_dir: Path) -> None:
    kd = kz_dir / "keys"
    assert mode(kd) == 0o700
    for name in PRIVATE:
        assert mode(kd / name) == 0o600, name
    node_keys = sorted(p.name for p in kd.glob("node-*.key"))
    assert len(node_keys) == 2
    for name in node_keys:
        assert mode(kd / name) == 0o600
    for name in PUBLIC:
        assert (kd / name).is_file()
    assert not list(kd.glob("*.tmp")) and not list(kd.glob(".*.tmp"))


def test_identity_json_is_public_metadata(kz: Identity, kz_dir: Path, now: datetime) -> None:
    meta = json.loads((kz_dir / "keys" / "identity.json").read_text())
    assert meta["party"] == "KZ"
    assert meta["endpoint"] == "https://kz.prolink.example:8443"
    assert meta["bundle_version"] == 1
    assert meta["suite"] == PQ_HYBRID
    assert meta["revocations"] == []
    [sig] = meta["signing_keys"]
    [enc] = meta["encryption_keys"]
    assert sig["key_id"] == kz.node_keys.signing.key_id == meta["current_signing_key"]
    assert enc["key_id"] == kz.node_keys.decryption[0].key_id == meta["current_encryption_key"]
    assert sig["file"] == f"node-signing-{sig['key_id']}.key"
    assert sig["valid_from"] == "2026-03-01T09:00:00.000000Z"
    assert sig["valid_until"] == "2028-02-29T09:00:00.000000Z"  # default lifetime: 730 days
    text = (kz_dir / "keys" / "identity.json").read_text()
    assert "PRIVATE" not in text and "private" not in text


def test_load_identity(kz: Identity, kz_dir: Path) -> None:
    loaded = load_identity(kz_dir)
    assert loaded.party == "KZ"
    assert loaded.node_keys.party == "KZ"
    assert loaded.node_keys.signing == kz.node_keys.signing
    assert loaded.node_keys.decryption == kz.node_keys.decryption
    assert loaded.tls_cert_path == kz_dir / "keys" / "tls-cert.pem"
    assert loaded.tls_key_path == kz_dir / "keys" / "tls-key.pem"
    assert loaded.tls_ca_path == kz_dir / "keys" / "tls-ca.pem"
    assert loaded.bundle_bytes() == (kz_dir / "keys" / "bundle.json").read_bytes()


def test_bundle_certifies_the_node_keys(kz: Identity, now: datetime) -> None:
    me = kz.trusted_self()
    assert me.party == "KZ"
    assert me.bundle.version == 1
    assert me.fingerprint == kz.fingerprint == export_bundle(kz.data_dir)[1]
    assert me.root == kz.root.public
    assert me.signing_key(kz.node_keys.signing.key_id, now) == kz.node_keys.signing.public
    enc = me.encryption_key(now)
    assert enc == kz.node_keys.decryption[0].public
    assert me.bundle.tls_ca_pem == kz.tls_ca_pem
    # what the bundle certifies actually works with the private keys on disk
    sealed = enc.seal(b"case file", b"info")
    assert kz.node_keys.decryption_key(enc.key_id).open(sealed, b"info") == b"case file"
    assert me.signing_key(kz.node_keys.signing.key_id, now).verify(kz.node_keys.signing.sign(b"x"), b"x")


def test_root_key_is_loaded_only_when_needed(kz: Identity, kz_dir: Path, tmp_path: Path) -> None:
    (kz_dir / "keys" / "root.key").rename(tmp_path / "offline-root.key")
    loaded = load_identity(kz_dir)  # a serving node does not need the root key
    assert loaded.bundle_bytes()
    assert loaded.trusted_self().party == "KZ"
    with pytest.raises(IdentityError) as exc:
        _ = loaded.root
    assert exc.value.code == "keys.root_offline"


def test_refuses_to_overwrite(kz: Identity, kz_dir: Path, now: datetime) -> None:
    before = (kz_dir / "keys" / "bundle.json").read_bytes()
    with pytest.raises(IdentityError) as exc:
        generate_identity(kz_dir, "KZ", "again", "https://kz.example", now, scrypt=CHEAP)
    assert exc.value.code == "keys.identity_exists"
    assert (kz_dir / "keys" / "bundle.json").read_bytes() == before


def test_no_identity(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as exc:
        load_identity(tmp_path)
    assert exc.value.code == "keys.no_identity"


def test_passphrase_protects_every_private_key(tmp_path: Path, now: datetime) -> None:
    d = tmp_path / "kz"
    generate_identity(d, "KZ", "KZ office", "https://kz.example", now, passphrase="pw", scrypt=CHEAP)
    for path in (d / "keys").glob("*.key"):
        if path.name.endswith(".key") and path.name != "tls-ca.key":
            assert json.loads(path.read_text())["encrypted"] is True
    assert (d / "keys" / "tls-ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    with pytest.raises(KeyFileError) as exc:
        load_identity(d)
    assert exc.value.code == "keys.passphrase_required"
    with pytest.raises(KeyFileError) as exc:
        load_identity(d, "wrong")
    assert exc.value.code == "keys.wrong_passphrase"
    ident = load_identity(d, "pw")
    assert ident.root.public == ident.root_public


def test_too_open_key_file_refuses_to_load(kz: Identity, kz_dir: Path) -> None:
    path = kz_dir / "keys" / f"node-signing-{kz.node_keys.signing.key_id}.key"
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as exc:
        load_identity(kz_dir)
    assert exc.value.code == "keys.bad_permissions"
    assert "chmod 600" in exc.value.message


def test_classic_suite(tmp_path: Path, now: datetime) -> None:
    ident = generate_identity(
        tmp_path / "c", "BY", "BY office", "https://by.example", now, suite=CLASSIC, scrypt=CHEAP
    )
    assert ident.node_keys.decryption[0].suite == CLASSIC
    assert ident.trusted_self().encryption_key(now).suite == CLASSIC


@pytest.mark.parametrize("party", ["kz", "", "K", "K Z", "ÄB", "1KZ"])
def test_bad_party(tmp_path: Path, now: datetime, party: str) -> None:
    with pytest.raises(IdentityError) as exc:
        generate_identity(tmp_path, party, "x", "https://x.example", now, scrypt=CHEAP)
    assert exc.value.code == "keys.bad_party"


@pytest.mark.parametrize("endpoint", ["http://kz.example", "kz.example:8443", "https://", "ftp://x"])
def test_bad_endpoint(tmp_path: Path, now: datetime, endpoint: str) -> None:
    with pytest.raises(IdentityError) as exc:
        generate_identity(tmp_path, "KZ", "x", endpoint, now, scrypt=CHEAP)
    assert exc.value.code == "keys.bad_endpoint"
    assert not (tmp_path / "keys").exists()


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_identity(tmp_path, "KZ", "x", "https://x.example", datetime(2026, 1, 1), scrypt=CHEAP)


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_tls_ca(kz: Identity, now: datetime) -> None:
    ca = x509.load_pem_x509_certificate(kz.tls_ca_path.read_bytes())
    assert "KZ" in _cn(ca.subject)
    assert ca.subject == ca.issuer
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3640) < lifetime < timedelta(days=3660)
    assert ca.not_valid_before_utc <= now < ca.not_valid_after_utc
    ca.verify_directly_issued_by(ca)


def test_node_certificate(kz: Identity, by: Identity, now: datetime) -> None:
    ca = x509.load_pem_x509_certificate(kz.tls_ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate(kz.tls_cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert _cn(cert.subject) == "KZ"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kz.prolink.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    # an IP endpoint goes in as an IP SAN
    by_cert = x509.load_pem_x509_certificate(by.tls_cert_path.read_bytes())
    by_san = by_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert by_san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert by_san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_two_identities_are_independent(kz: Identity, by: Identity) -> None:
    assert kz.fingerprint != by.fingerprint
    assert kz.tls_ca_pem != by.tls_ca_pem
    assert fingerprint(kz.root_public) == kz.fingerprint


def test_errors_are_trust_errors() -> None:
    assert issubclass(KeyFileError, TrustError)
    assert issubclass(IdentityError, TrustError)


def test_load_with_now_uses_aware_time(kz: Identity, kz_dir: Path) -> None:
    later = datetime(2026, 6, 1, tzinfo=UTC)
    assert load_identity(kz_dir, now=later).node_keys.decryption == kz.node_keys.decryption

"""TLS for the peer API: a per-Party CA, the node certificate, and mutual-TLS contexts.

Each Party has its own small CA (ECDSA P-256, pathlen 0) whose certificate
travels in the signed bundle, so a peer trusts exactly that CA and nothing from
the system store. The node certificate (serverAuth + clientAuth) is used both
to serve and to call the peer.

Certificate generation takes ``now``; this module never reads the clock.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol._errors import TrustError

from ._files import tls_key_password

if TYPE_CHECKING:
    from protocol._trust import TrustedParty

    from ._identity import Identity

CA_LIFETIME = timedelta(days=3650)
#: Certificates start a little in the past so a peer whose clock runs behind accepts them.
BACKDATE = timedelta(hours=1)
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def generate_ca(
    party: str, name: str, now: datetime, lifetime: timedelta = CA_LIFETIME
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"prolink {party} TLS CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name or party),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"prolink party {party}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def san_for_endpoint(endpoint_host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []

    def add(name: x509.GeneralName) -> None:
        if name not in names:
            names.append(name)

    try:
        add(x509.IPAddress(ipaddress.ip_address(endpoint_host)))
    except ValueError:
        add(x509.DNSName(endpoint_host.lower()))
    add(x509.DNSName("localhost"))
    add(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return names


def issue_node_cert(
    party: str,
    endpoint_host: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
    lifetime: timedelta,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san_for_endpoint(endpoint_host)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- ssl contexts -----------------------------------------------------------------


def _base(ctx: ssl.SSLContext, identity: Identity, allow_tls12: bool) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if allow_tls12 else ssl.TLSVersion.TLSv1_3
    if allow_tls12:
        ctx.set_ciphers(_TLS12_CIPHERS)  # forward secrecy and AEAD only (TLS 1.3 suites are all fine)
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    password = tls_key_password(identity.tls_key_path, identity.passphrase)
    ctx.load_cert_chain(str(identity.tls_cert_path), str(identity.tls_key_path), password=password)


def _check_pem(pem: str) -> str:
    try:
        x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise TrustError("a peer TLS CA is not a PEM certificate", code="trust.bad_tls_ca") from None
    return pem


def server_ssl_context(
    identity: Identity, peer_ca_pems: list[str], allow_tls12: bool = False, *, allow_no_peer: bool = False
) -> ssl.SSLContext:
    """Server side of the peer API: client certificates required, issued by one of ``peer_ca_pems``.

    Only the given CAs (from peers' verified bundles) are trusted; the system
    store is never loaded. No CA at all is refused (the server would accept no
    client) unless ``allow_no_peer``: a node started before its first peer was
    added, whose key sync adds each peer's CA to the live context.
    """
    if not peer_ca_pems and not allow_no_peer:
        raise TrustError("no peer TLS CA given: the server would accept no client", code="trust.no_peer_ca")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _base(ctx, identity, allow_tls12)
    if peer_ca_pems:
        ctx.load_verify_locations(cadata="\n".join(_check_pem(p) for p in peer_ca_pems))
    return ctx


def client_ssl_context(identity: Identity, peer_ca_pem: str, allow_tls12: bool = False) -> ssl.SSLContext:
    """Client side: the server must present a certificate from this one peer's CA, for the host we dial."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _base(ctx, identity, allow_tls12)
    ctx.check_hostname = True
    ctx.load_verify_locations(cadata=_check_pem(peer_ca_pem))
    return ctx


def peer_party(cert_der: bytes, parties: Iterable[TrustedParty]) -> TrustedParty:
    """Which trusted Party a verified client certificate (``getpeercert(binary_form=True)``) belongs to.

    The issuing CA decides (each Party's CA is in its verified bundle); the
    certificate's CN must also name that Party. Call only after the TLS
    handshake verified the chain, which this function does not repeat in full.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise TrustError("peer certificate is not DER X.509", code="trust.unknown_peer") from None
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    for party in parties:
        ca = x509.load_pem_x509_certificate(party.bundle.tls_ca_pem.encode("ascii"))
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if cns == [party.party]:
            return party
        raise TrustError(
            f"certificate from {party.party}'s CA names {cns}, not {party.party}", code="trust.unknown_peer"
        )
    raise TrustError("peer certificate is not issued by any trusted Party's CA", code="trust.unknown_peer")

"""Thin, typed wrappers over the primitives prolink uses, and the HPKE suites.

Every key has a ``key_id``: the first 16 bytes (hex) of
``SHA-256("prolink-key-v1" 0x00 alg 0x00 public_bytes)``, so an id names one
algorithm and one public key and can be recomputed by anyone.

Ed25519 signs and verifies with libsodium (PyNaCl): it verifies about twice
as fast as ``cryptography``'s OpenSSL here (``bench/bench_protocol.py`` prints
both), and it is strict: it refuses non-canonical encodings and small-order
points, which RFC 8032 leaves open. Signatures are the same bytes either way
(Ed25519 is deterministic). HPKE comes from ``cryptography``.

Pure: no I/O, no clock. Randomness comes from the OS CSPRNG through
``cryptography``; that is the only outside state touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from ._errors import EnvelopeError, TrustError

ED25519 = "ed25519"


def key_id_for(alg: str, public: bytes) -> str:
    digest = hashlib.sha256(b"prolink-key-v1\x00" + alg.encode() + b"\x00" + public).digest()
    return digest[:16].hex()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key."""

    public: bytes
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.public) != 32:
            raise TrustError("an Ed25519 public key is 32 bytes", code="trust.bad_key")
        object.__setattr__(self, "key_id", key_id_for(ED25519, self.public))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is a valid Ed25519 signature of ``data`` (RFC 8032, libsodium's strict
        checks: a key or signature point that is not canonical or of small order never verifies)."""
        if len(signature) != 64:
            return False
        try:
            crypto_sign_open(signature + data, self.public)
        except (BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key, held as its 32-byte seed."""

    seed: bytes = field(repr=False)
    public: VerifyKey = field(init=False)
    _secret: bytes = field(init=False, repr=False, compare=False)  # libsodium's seed || public key

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise TrustError("an Ed25519 private key is a 32-byte seed", code="trust.bad_key")
        public, secret = crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "public", VerifyKey(public))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        return crypto_sign(data, self._secret)[:64]  # (signature || data)


# --- HPKE (RFC 9180) ---------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    kem: hpke.KEM
    kdf: hpke.KDF
    aead: hpke.AEAD
    public_len: int
    private_len: int

    def suite(self) -> hpke.Suite:
        return hpke.Suite(self.kem, self.kdf, self.aead)


PQ_HYBRID = "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM"
CLASSIC = "X25519/HKDF_SHA256/AES_256_GCM"
DEFAULT_SUITE = PQ_HYBRID

SUITES: dict[str, SuiteSpec] = {
    PQ_HYBRID: SuiteSpec(
        PQ_HYBRID,
        hpke.KEM.MLKEM768_X25519,
        hpke.KDF.HKDF_SHA256,
        hpke.AEAD.AES_256_GCM,
        public_len=1184 + 32,
        private_len=64 + 32,
    ),
    CLASSIC: SuiteSpec(
        CLASSIC, hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM, public_len=32, private_len=32
    ),
}


def suite_spec(name: str) -> SuiteSpec:
    try:
        return SUITES[name]
    except KeyError:
        raise EnvelopeError(f"unsupported HPKE suite {name!r}", code="envelope.unsupported_suite") from None


@dataclass(frozen=True)
class EncryptionKey:
    """A recipient's public HPKE key: raw bytes in the suite's layout (ML-KEM || X25519 for the hybrid)."""

    suite: str
    public: bytes
    key_id: str = field(init=False)
    _key: Any = field(init=False, repr=False, compare=False)
    _suite: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = suite_spec(self.suite)
        if len(self.public) != spec.public_len:
            raise TrustError(f"a {self.suite} public key is {spec.public_len} bytes", code="trust.bad_key")
        object.__setattr__(self, "key_id", key_id_for(self.suite, self.public))
        object.__setattr__(self, "_suite", spec.suite())
        try:
            if self.suite == PQ_HYBRID:
                key: Any = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(self.public[:1184]),
                    x25519.X25519PublicKey.from_public_bytes(self.public[1184:]),
                )
            else:
                key = x25519.X25519PublicKey.from_public_bytes(self.public)
        except ValueError:
            raise TrustError(f"not a valid {self.suite} public key", code="trust.bad_key") from None
        object.__setattr__(self, "_key", key)

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE single-shot base mode: ``enc || ciphertext``."""
        return bytes(self._suite.encrypt(plaintext, self._key, info=info))


@dataclass(frozen=True)
class DecryptionKey:
    """A node's private HPKE key (ML-KEM-768 seed || X25519 scalar for the hybrid)."""

    suite: str
    private: bytes = field(repr=False)
    public: EncryptionKey = field(init=False)
    _key: Any = field(init=False, repr=False, compare=False)
    _suite: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = suite_spec(self.suite)
        if len(self.private) != spec.private_len:
            raise TrustError(f"a {self.suite} private key is {spec.private_len} bytes", code="trust.bad_key")
        if self.suite == PQ_HYBRID:
            mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.private[:64])
            xk = x25519.X25519PrivateKey.from_private_bytes(self.private[64:])
            key: Any = hpke.MLKEM768X25519PrivateKey(mk, xk)
            pub = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        else:
            key = x25519.X25519PrivateKey.from_private_bytes(self.private)
            pub = key.public_key().public_bytes_raw()
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_suite", spec.suite())
        object.__setattr__(self, "public", EncryptionKey(self.suite, pub))

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> DecryptionKey:
        if suite == PQ_HYBRID:
            mk = mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
            return cls(suite, mk + x25519.X25519PrivateKey.generate().private_bytes_raw())
        suite_spec(suite)
        return cls(suite, x25519.X25519PrivateKey.generate().private_bytes_raw())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def open(self, sealed: bytes, info: bytes) -> bytes:
        try:
            return bytes(self._suite.decrypt(sealed, self._key, info=info))
        except (InvalidTag, ValueError):
            raise EnvelopeError(
                "the body does not decrypt with this node's key", code="envelope.decrypt_failed"
            ) from None

"""Who is who: Party bundles, signing authorisations and revocations.

Everything here is a DSSE statement signed by a Party's **root key**, whose
fingerprint the two Parties compared out of band. ``verify_bundle`` is the one
door through which a Party's keys become trusted; ``TrustedParty`` answers
"which key of this Party was valid at time t", taking revocations into account.

Pure: no I/O; time is always an argument.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Final

from ._encoding import Signed, b64d, b64e, canonical_json, parse_json
from ._errors import EncodingError, ProlinkError, TrustError
from ._primitives import EncryptionKey, SigningKey, VerifyKey

BUNDLE_TYPE = "application/vnd.prolink.bundle+json"
AUTHORISATION_TYPE = "application/vnd.prolink.authorisation+json"
REVOCATION_TYPE = "application/vnd.prolink.revocation+json"
BUNDLE_FORMAT = "prolink-bundle/1"


# --- time helpers (values are passed in, never read from a clock) ------------


def format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: What ``datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")`` accepts, ASCII digits only; matched by hand,
#: as strptime costs more than verifying a signature does (every envelope and receipt holds timestamps).
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})T([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})"
    r"\.([0-9]{1,6})Z"
)


def parse_time(text: Any, *, what: str) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise EncodingError(f"{what}: expected a UTC timestamp ending in Z")
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise EncodingError(f"{what}: not a timestamp")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(fraction.ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:  # a day, hour... out of range
        raise EncodingError(f"{what}: not a timestamp") from None


def parse_date(text: Any, *, what: str) -> date:
    if not isinstance(text, str):
        raise EncodingError(f"{what}: expected a date")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise EncodingError(f"{what}: not a date") from None


def fingerprint(root: VerifyKey) -> str:
    """Root-key fingerprint two people can read to each other over the phone.

    Eight groups of five digits (like Signal's safety numbers): each group is
    five bytes of ``SHA-256("prolink-fingerprint-v1" || root public key)``
    taken as a big-endian number modulo 100000. About 132 bits.
    """
    digest = hashlib.sha256(b"prolink-fingerprint-v1\x00" + root.public).digest()
    groups = [int.from_bytes(digest[i * 4 : i * 4 + 5], "big") % 100000 for i in range(8)]
    return " ".join(f"{g:05d}" for g in groups)


def normalise_fingerprint(text: str) -> str:
    digits = "".join(ch for ch in text if ch.isdigit())
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


# --- signing and verifying DSSE statements -----------------------------------


def sign_statement(payload_type: str, payload: dict[str, Any], key: SigningKey) -> Signed:
    body = canonical_json(payload)
    unsigned = Signed(payload_type, body, key.key_id, b"")
    return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))


def verify_statement(
    signed: Signed, payload_type: str, key: VerifyKey, *, what: str, code: str = "trust.bad_signature"
) -> dict[str, Any]:
    """Check type, key id and signature on the exact payload bytes, then parse them."""
    if signed.payload_type != payload_type:
        raise TrustError(f"{what}: expected payload type {payload_type}", code="trust.wrong_type")
    if signed.key_id != key.key_id:
        raise TrustError(
            f"{what}: signed by key {signed.key_id}, expected {key.key_id}", code="trust.unknown_key"
        )
    if not key.verify(signed.signature, signed.signed_bytes()):
        raise TrustError(f"{what}: signature does not verify", code=code)
    obj = parse_json(signed.payload, what=what)
    if not isinstance(obj, dict):
        raise EncodingError(f"{what}: payload is not an object")
    return obj


# --- bundle ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValidity:
    key_id: str
    valid_from: datetime
    valid_until: datetime | None


@dataclass(frozen=True)
class Revocation:
    key_id: str
    revoked_at: datetime
    reason: str


@dataclass(frozen=True)
class BundleContents:
    """What a Party publishes: filled in by ``keys`` and signed by the root key."""

    party: str
    name: str
    endpoint: str
    version: int
    issued_at: datetime
    root: VerifyKey
    signing_keys: tuple[tuple[VerifyKey, KeyValidity], ...]
    encryption_keys: tuple[tuple[EncryptionKey, KeyValidity], ...]
    tls_ca_pem: str
    revocations: tuple[Revocation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def validity(v: KeyValidity) -> dict[str, Any]:
            return {
                "valid_from": format_time(v.valid_from),
                "valid_until": format_time(v.valid_until) if v.valid_until else None,
            }

        return {
            "format": BUNDLE_FORMAT,
            "party": self.party,
            "name": self.name,
            "endpoint": self.endpoint,
            "version": self.version,
            "issued_at": format_time(self.issued_at),
            "root_key": {"alg": "ed25519", "public": b64e(self.root.public), "key_id": self.root.key_id},
            "signing_keys": [
                {"key_id": k.key_id, "alg": "ed25519", "public": b64e(k.public), **validity(v)}
                for k, v in self.signing_keys
            ],
            "encryption_keys": [
                {"key_id": k.key_id, "suite": k.suite, "public": b64e(k.public), **validity(v)}
                for k, v in self.encryption_keys
            ],
            "tls_ca_pem": self.tls_ca_pem,
            "revocations": [
                {"key_id": r.key_id, "revoked_at": format_time(r.revoked_at), "reason": r.reason}
                for r in self.revocations
            ],
        }


def sign_bundle(contents: BundleContents, root: SigningKey) -> bytes:
    if root.public != contents.root:
        raise TrustError("the bundle must be signed by its own root key", code="trust.bad_bundle")
    return sign_statement(BUNDLE_TYPE, contents.to_json(), root).to_bytes()


def _validity(obj: dict[str, Any], what: str) -> tuple[datetime, datetime | None]:
    start = parse_time(obj.get("valid_from"), what=f"{what}.valid_from")
    end_raw = obj.get("valid_until")
    end = None if end_raw is None else parse_time(end_raw, what=f"{what}.valid_until")
    return start, end


def _parse_bundle(obj: dict[str, Any]) -> BundleContents:
    try:
        if obj.get("format") != BUNDLE_FORMAT:
            raise TrustError("not a prolink bundle (format)", code="trust.bad_bundle")
        root_obj = obj["root_key"]
        root = VerifyKey(b64d(root_obj["public"], what="root_key.public"))
        signing: list[tuple[VerifyKey, KeyValidity]] = []
        for i, k in enumerate(obj["signing_keys"]):
            vk = VerifyKey(b64d(k["public"], what=f"signing_keys[{i}].public"))
            if k["key_id"] != vk.key_id or k["alg"] != "ed25519":
                raise TrustError(f"signing_keys[{i}]: key id does not match the key", code="trust.bad_bundle")
            signing.append((vk, KeyValidity(vk.key_id, *_validity(k, f"signing_keys[{i}]"))))
        encryption: list[tuple[EncryptionKey, KeyValidity]] = []
        for i, k in enumerate(obj["encryption_keys"]):
            ek = EncryptionKey(k["suite"], b64d(k["public"], what=f"encryption_keys[{i}].public"))
            if k["key_id"] != ek.key_id:
                raise TrustError(
                    f"encryption_keys[{i}]: key id does not match the key", code="trust.bad_bundle"
                )
            encryption.append((ek, KeyValidity(ek.key_id, *_validity(k, f"encryption_keys[{i}]"))))
        revocations = tuple(
            Revocation(r["key_id"], parse_time(r["revoked_at"], what="revoked_at"), str(r["reason"]))
            for r in obj["revocations"]
        )
        party, name, endpoint, version = obj["party"], obj["name"], obj["endpoint"], obj["version"]
        if not (
            isinstance(party, str)
            and isinstance(name, str)
            and isinstance(endpoint, str)
            and isinstance(version, int)
            and not isinstance(version, bool)
            and version >= 1
            and isinstance(obj["tls_ca_pem"], str)
        ):
            raise TrustError("bundle fields have the wrong types", code="trust.bad_bundle")
        if not signing or not encryption:
            raise TrustError(
                "a bundle needs at least one signing and one encryption key", code="trust.bad_bundle"
            )
        return BundleContents(
            party,
            name,
            endpoint,
            version,
            parse_time(obj["issued_at"], what="issued_at"),
            root,
            tuple(signing),
            tuple(encryption),
            obj["tls_ca_pem"],
            revocations,
        )
    except ProlinkError:
        raise
    except (KeyError, TypeError, AttributeError):
        raise TrustError("bundle is missing fields or has the wrong shape", code="trust.bad_bundle") from None


@dataclass(frozen=True)
class TrustedParty:
    """A Party whose bundle verified under a root key the operator confirmed."""

    bundle: BundleContents
    raw: bytes = field(repr=False)
    extra_revocations: tuple[Revocation, ...] = ()

    @property
    def party(self) -> str:
        return self.bundle.party

    @property
    def root(self) -> VerifyKey:
        return self.bundle.root

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.bundle.root)

    def revocation_of(self, key_id: str) -> Revocation | None:
        found = [r for r in (*self.bundle.revocations, *self.extra_revocations) if r.key_id == key_id]
        return min(found, key=lambda r: r.revoked_at) if found else None

    def check_not_revoked(self, key_id: str, at: datetime, *, what: str) -> None:
        rev = self.revocation_of(key_id)
        if rev is not None and at >= rev.revoked_at:
            raise TrustError(
                f"{what}: key {key_id} was revoked at {format_time(rev.revoked_at)} ({rev.reason})",
                code="trust.key_revoked",
            )

    def signing_key(self, key_id: str, at: datetime) -> VerifyKey:
        """The node signing key ``key_id`` if it was valid and unrevoked at ``at``."""
        for key, validity in self.bundle.signing_keys:
            if key.key_id == key_id:
                _check_validity(validity, at, what=f"{self.party} signing key")
                self.check_not_revoked(key_id, at, what=f"{self.party} signing key")
                return key
        raise TrustError(f"{self.party} has no signing key {key_id}", code="trust.unknown_key")

    def encryption_key(self, at: datetime) -> EncryptionKey:
        """The newest encryption key valid at ``at``: what a sender encrypts to."""
        usable = [
            (k, v)
            for k, v in self.bundle.encryption_keys
            if v.valid_from <= at
            and (v.valid_until is None or at < v.valid_until)
            and (self.revocation_of(k.key_id) is None)
        ]
        if not usable:
            raise TrustError(f"{self.party} has no encryption key valid now", code="trust.no_valid_key")
        return max(usable, key=lambda kv: kv[1].valid_from)[0]

    def with_revocation(self, signed_revocation: bytes) -> TrustedParty:
        rev = verify_revocation(signed_revocation, self)
        return replace(self, extra_revocations=(*self.extra_revocations, rev))


def _check_validity(v: KeyValidity, at: datetime, *, what: str) -> None:
    if at < v.valid_from:
        raise TrustError(
            f"{what} {v.key_id} is not valid before {format_time(v.valid_from)}",
            code="trust.key_not_yet_valid",
        )
    if v.valid_until is not None and at >= v.valid_until:
        raise TrustError(
            f"{what} {v.key_id} expired at {format_time(v.valid_until)}", code="trust.key_expired"
        )


def verify_bundle(
    data: bytes, expected_fingerprint: str | None = None, pinned_root: VerifyKey | None = None
) -> TrustedParty:
    """Verify a signed bundle. The one door through which a Party's keys become trusted.

    The root key must match ``expected_fingerprint`` (typed by an operator on
    first import) or ``pinned_root`` (the root already trusted, for a new bundle
    version); one of the two is required.
    """
    if expected_fingerprint is None and pinned_root is None:
        raise TrustError(
            "a bundle is only trusted against a fingerprint or a pinned root", code="trust.no_anchor"
        )
    try:
        signed = Signed.from_bytes(data, what="bundle")
        unverified = parse_json(signed.payload, what="bundle payload")
        if not isinstance(unverified, dict) or not isinstance(unverified.get("root_key"), dict):
            raise TrustError("bundle has no root key", code="trust.bad_bundle")
        root = VerifyKey(b64d(unverified["root_key"].get("public"), what="root_key.public"))
    except EncodingError as exc:
        raise TrustError(f"bundle is malformed: {exc.message}", code="trust.bad_bundle") from None
    if pinned_root is not None and root != pinned_root:
        raise TrustError(
            "bundle is signed by a different root key than the one trusted", code="trust.fingerprint_mismatch"
        )
    if expected_fingerprint is not None and normalise_fingerprint(expected_fingerprint) != fingerprint(root):
        raise TrustError(
            "bundle root key does not match the fingerprint given", code="trust.fingerprint_mismatch"
        )
    try:
        obj = verify_statement(signed, BUNDLE_TYPE, root, what="bundle")
    except EncodingError as exc:
        raise TrustError(f"bundle is malformed: {exc.message}", code="trust.bad_bundle") from None
    return TrustedParty(_parse_bundle(obj), data)


# --- signing authorisations (Art. 4) ------------------------------------------


@dataclass(frozen=True)
class Authorisation:
    """ "Person P, position Q, may sign for Party X with key K from date A to date B" (Art. 4)."""

    party: str
    person: str
    position: str
    key: VerifyKey
    valid_from: date
    valid_until: date
    issued_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "person": self.person,
            "position": self.position,
            "key_id": self.key.key_id,
            "public": b64e(self.key.public),
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat(),
            "issued_at": format_time(self.issued_at),
        }

    def covers(self, on: date) -> bool:
        return self.valid_from <= on <= self.valid_until


def issue_authorisation(auth: Authorisation, root: SigningKey) -> bytes:
    if auth.valid_until < auth.valid_from:
        raise TrustError("an authorisation cannot end before it starts", code="trust.bad_authorisation")
    return sign_statement(AUTHORISATION_TYPE, auth.to_json(), root).to_bytes()


def verify_authorisation(data: bytes, party: TrustedParty) -> Authorisation:
    """Verify an authorisation against the issuing Party's root key (validity dates are checked by the
    caller).

    Every envelope carries its signer's authorisation; the few a Party issues
    are verified once each per root key and remembered (the result depends on
    nothing else). Refusals are not remembered.
    """
    return _verified_authorisation(data, party.root, party.party)


@functools.lru_cache(maxsize=256)
def _verified_authorisation(data: bytes, root: VerifyKey, issuer: str) -> Authorisation:
    try:
        obj = verify_statement(
            Signed.from_bytes(data, what="authorisation"),
            AUTHORISATION_TYPE,
            root,
            what="authorisation",
            code="trust.bad_authorisation",
        )
        key = VerifyKey(b64d(obj["public"], what="authorisation.public"))
        auth = Authorisation(
            party=obj["party"],
            person=obj["person"],
            position=obj["position"],
            key=key,
            valid_from=parse_date(obj["valid_from"], what="valid_from"),
            valid_until=parse_date(obj["valid_until"], what="valid_until"),
            issued_at=parse_time(obj["issued_at"], what="issued_at"),
        )
        if obj["key_id"] != key.key_id or not all(
            isinstance(x, str) for x in (auth.party, auth.person, auth.position)
        ):
            raise TrustError("authorisation fields are inconsistent", code="trust.bad_authorisation")
    except (KeyError, TypeError, EncodingError):
        raise TrustError("authorisation is malformed", code="trust.bad_authorisation") from None
    if auth.party != issuer:
        raise TrustError(f"authorisation is for {auth.party}, not {issuer}", code="trust.bad_authorisation")
    return auth


# --- revocations --------------------------------------------------------------


def issue_revocation(key_id: str, revoked_at: datetime, reason: str, root: SigningKey) -> bytes:
    return sign_statement(
        REVOCATION_TYPE, {"key_id": key_id, "revoked_at": format_time(revoked_at), "reason": reason}, root
    ).to_bytes()


def verify_revocation(data: bytes, party: TrustedParty) -> Revocation:
    try:
        obj = verify_statement(
            Signed.from_bytes(data, what="revocation"), REVOCATION_TYPE, party.root, what="revocation"
        )
        if not isinstance(obj["key_id"], str) or not isinstance(obj["reason"], str):
            raise TrustError("revocation fields have the wrong types", code="trust.bad_revocation")
        return Revocation(obj["key_id"], parse_time(obj["revoked_at"], what="revoked_at"), obj["reason"])
    except (KeyError, TypeError, EncodingError):
        raise TrustError("revocation is malformed", code="trust.bad_revocation") from None

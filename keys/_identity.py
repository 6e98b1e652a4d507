"""A Party's identity on disk: root key, node keys, TLS, and the signed bundle.

Layout under ``data_dir/keys/`` (directory mode 0700)::

    identity.json              public metadata (party, name, endpoint, bundle version,
                               node keys with ids, validity and file names, revocations)
    bundle.json                the current root-signed bundle (serving needs no root key)
    root.key                   root key, Ed25519 (may be moved offline once set up)
    node-signing-<id>.key      node signing keys, Ed25519
    node-encryption-<id>.key   node HPKE keys
    tls-ca.key  tls-ca.pem     the Party's TLS CA (PKCS#8 PEM key, 0600; certificate)
    tls-key.pem tls-cert.pem   the node TLS key (0600) and certificate
    signatories/<id>.key/.auth signatory keys and their root-signed authorisations (Art. 4)

Every private file is 0600 from creation. Every change that alters what the
peer must know (rotation, revocation) produces a new bundle version signed by
the root key and rewrites ``bundle.json``. Time is always an argument.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509

from protocol._encoding import Signed, b64d, b64e, canonical_json, parse_json
from protocol._errors import ProlinkError, TrustError
from protocol._primitives import PQ_HYBRID, DecryptionKey, EncryptionKey, SigningKey, VerifyKey, suite_spec
from protocol._trust import (
    BundleContents,
    KeyValidity,
    Revocation,
    TrustedParty,
    fingerprint,
    format_time,
    issue_revocation,
    parse_time,
    sign_bundle,
    verify_bundle,
)

from ._files import (
    DEFAULT_SCRYPT,
    PUBLIC_MODE,
    Passphrase,
    ScryptParams,
    atomic_write,
    locked,
    read_decryption_key,
    read_signing_key,
    read_tls_key,
    write_private_key,
    write_tls_key,
)
from ._tls import cert_pem, generate_ca, issue_node_cert

if TYPE_CHECKING:
    from protocol._envelope import NodeKeys

IDENTITY_FORMAT = "prolink-identity/1"
DEFAULT_KEY_LIFETIME = timedelta(days=730)
DEFAULT_TLS_LIFETIME = timedelta(days=825)

IDENTITY_FILE = "identity.json"
BUNDLE_FILE = "bundle.json"
ROOT_FILE = "root.key"
TLS_CA_CERT, TLS_CA_KEY = "tls-ca.pem", "tls-ca.key"
TLS_CERT, TLS_KEY = "tls-cert.pem", "tls-key.pem"
SIGNATORIES_DIR = "signatories"


class IdentityError(TrustError):
    """An identity operation that cannot be done as asked.

    Codes: ``keys.no_identity``, ``keys.identity_exists``, ``keys.bad_identity``,
    ``keys.bad_party``, ``keys.bad_endpoint``, ``keys.unknown_key``,
    ``keys.current_key``, ``keys.already_revoked``, ``keys.root_offline``.
    """

    code = "keys.bad_identity"


def keys_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "keys"


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


def _check_party(party: str) -> str:
    if not (
        2 <= len(party) <= 16
        and party.isascii()
        and party.isalnum()
        and party.isupper()
        and party[0].isalpha()
    ):
        raise IdentityError(
            f"party code {party!r} must be 2-16 upper-case letters or digits", code="keys.bad_party"
        )
    return party


def endpoint_host(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    host = parts.hostname
    if parts.scheme != "https" or not host:
        raise IdentityError(
            f"endpoint {endpoint!r} must be an https:// URL with a host", code="keys.bad_endpoint"
        )
    return host


# --- identity.json ------------------------------------------------------------------


def _read_state(kd: Path) -> dict[str, Any]:
    path = kd / IDENTITY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no identity in {kd.parent} (run init first)", code="keys.no_identity") from None
    try:
        state = parse_json(data, what=str(path))
    except ProlinkError as exc:
        raise IdentityError(f"{path} is malformed: {exc.message}") from None
    if not isinstance(state, dict) or state.get("format") != IDENTITY_FORMAT:
        raise IdentityError(f"{path} is not a prolink identity file")
    return state


def _write_state(kd: Path, state: dict[str, Any]) -> None:
    atomic_write(kd / IDENTITY_FILE, canonical_json(state) + b"\n", mode=PUBLIC_MODE)


def _validity(entry: dict[str, Any]) -> KeyValidity:
    until = entry.get("valid_until")
    return KeyValidity(
        entry["key_id"],
        parse_time(entry["valid_from"], what="valid_from"),
        None if until is None else parse_time(until, what="valid_until"),
    )


def _key_entry(
    key_id: str, public: bytes, file: str, valid_from: datetime, valid_until: datetime | None, **extra: str
) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "public": b64e(public),
        "file": file,
        **extra,
        "valid_from": format_time(valid_from),
        "valid_until": None if valid_until is None else format_time(valid_until),
    }


def _contents(kd: Path, state: dict[str, Any], version: int, now: datetime) -> BundleContents:
    try:
        return BundleContents(
            party=state["party"],
            name=state["name"],
            endpoint=state["endpoint"],
            version=version,
            issued_at=now,
            root=VerifyKey(b64d(state["root"]["public"], what="root")),
            signing_keys=tuple(
                (VerifyKey(b64d(e["public"], what="signing key")), _validity(e))
                for e in state["signing_keys"]
            ),
            encryption_keys=tuple(
                (EncryptionKey(e["suite"], b64d(e["public"], what="encryption key")), _validity(e))
                for e in state["encryption_keys"]
            ),
            tls_ca_pem=(kd / state["tls"]["ca_cert"]).read_text("ascii"),
            revocations=tuple(
                Revocation(r["key_id"], parse_time(r["revoked_at"], what="revoked_at"), r["reason"])
                for r in state["revocations"]
            ),
        )
    except (KeyError, TypeError) as exc:
        raise IdentityError(f"identity.json is missing {exc}") from None


def _published_version(kd: Path) -> int:
    """The version in bundle.json (0 if there is none yet); our own file, so no signature check here."""
    try:
        signed = Signed.from_bytes((kd / BUNDLE_FILE).read_bytes(), what="bundle")
        return int(parse_json(signed.payload, what="bundle payload")["version"])
    except (FileNotFoundError, ProlinkError, KeyError, TypeError, ValueError):
        return 0


def _publish(kd: Path, state: dict[str, Any], root: SigningKey, now: datetime) -> bytes:
    """Sign the next bundle version and write bundle.json, then identity.json.

    The version is one more than both the recorded and the published one, so a
    crash between the two writes never reuses a version number with other contents.
    """
    version = max(int(state.get("bundle_version", 0)), _published_version(kd)) + 1
    bundle = sign_bundle(_contents(kd, state, version, now), root)
    verify_bundle(bundle, pinned_root=root.public)  # never publish what a peer would refuse
    atomic_write(kd / BUNDLE_FILE, bundle, mode=PUBLIC_MODE)
    state["bundle_version"] = version
    _write_state(kd, state)
    return bundle


def _root_public(state: dict[str, Any]) -> VerifyKey:
    return VerifyKey(b64d(state["root"]["public"], what="root"))


def _load_root(kd: Path, state: dict[str, Any], passphrase: Passphrase | None) -> SigningKey:
    path = kd / state["root"]["file"]
    if not path.exists():
        raise IdentityError(
            f"the root key {path} is not present (kept offline?); it is needed here", code="keys.root_offline"
        )
    root = read_signing_key(path, passphrase)
    if root.public != _root_public(state):
        raise IdentityError(f"{path} is not this identity's root key")
    return root


# --- the Identity object -------------------------------------------------------------


class Identity:
    """A node's loaded identity: current keys for sealing and opening, TLS paths, the bundle."""

    def __init__(
        self, data_dir: Path, state: dict[str, Any], node_keys: NodeKeys, passphrase: Passphrase | None
    ) -> None:
        self.data_dir = Path(data_dir)
        self._kd = keys_dir(data_dir)
        self._bundle_path = os.fspath(self._kd / BUNDLE_FILE)  # (a str: each send stats it, ``trusted_self``)
        self._state = state
        self.party: str = state["party"]
        self.name: str = state["name"]
        self.endpoint: str = state["endpoint"]
        self.suite: str = state["suite"]
        self.bundle_version: int = state["bundle_version"]
        self.node_keys = node_keys
        self.root_public = _root_public(state)
        self.tls_ca_path: Path = self._kd / state["tls"]["ca_cert"]
        self.tls_cert_path: Path = self._kd / state["tls"]["cert"]
        self.tls_key_path: Path = self._kd / state["tls"]["key"]
        self._passphrase = passphrase
        self._root: SigningKey | None = None
        self._trusted_self: tuple[tuple[int, int, int, int], TrustedParty] | None = None

    def __repr__(self) -> str:
        return (
            f"Identity(party={self.party!r}, data_dir={str(self.data_dir)!r}, version={self.bundle_version})"
        )

    @property
    def passphrase(self) -> Passphrase | None:
        """The passphrase the identity was loaded with (needed for the TLS key and the root key)."""
        return self._passphrase

    @property
    def root(self) -> SigningKey:
        """The root key, read from disk on first use only (it may be kept offline)."""
        if self._root is None:
            self._root = _load_root(self._kd, self._state, self._passphrase)
        return self._root

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.root_public)

    @property
    def tls_ca_pem(self) -> str:
        return self.tls_ca_path.read_text("ascii")

    def bundle_bytes(self) -> bytes:
        """The current signed bundle, exactly as published in bundle.json."""
        with open(self._bundle_path, "rb") as f:
            return f.read()

    def trusted_self(self) -> TrustedParty:
        """Our own bundle verified against our own root: what a peer holds about us.

        bundle.json is looked at every time (a revocation written by the CLI counts
        at once), but read and verified again only when the file changed: every
        write replaces it (``atomic_write``), so its inode, change time or size
        differ; verification depends on nothing else, and every send asks. A
        stat costs a fraction of reading the file.
        """
        st = os.stat(self._bundle_path)
        version = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        cached = self._trusted_self
        if cached is None or cached[0] != version:
            # Replaced between the stat and the read: we hold the newer bytes under the older version,
            # and the next call reads them again.
            data = self.bundle_bytes()
            cached = (version, verify_bundle(data, pinned_root=self.root_public))
            self._trusted_self = cached
        return cached[1]


def generate_identity(
    data_dir: Path | str,
    party: str,
    name: str,
    endpoint: str,
    now: datetime,
    passphrase: Passphrase | None = None,
    suite: str = PQ_HYBRID,
    key_lifetime: timedelta | None = DEFAULT_KEY_LIFETIME,
    *,
    tls_lifetime: timedelta = DEFAULT_TLS_LIFETIME,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> Identity:
    """Create a Party's identity under ``data_dir/keys`` and publish bundle version 1.

    Refuses to touch a directory that already holds an identity (or a partial one).
    """
    _aware(now)
    _check_party(party)
    host = endpoint_host(endpoint)
    suite_spec(suite)
    if not name.strip():
        raise IdentityError("the Party name must not be empty", code="keys.bad_identity")
    kd = keys_dir(data_dir)
    if (kd / IDENTITY_FILE).exists() or (kd / ROOT_FILE).exists():
        raise IdentityError(
            f"{kd} already holds an identity (or the remains of an interrupted init); "
            "refusing to overwrite it",
            code="keys.identity_exists",
        )
    kd.mkdir(mode=0o700, parents=True, exist_ok=True)
    (kd / SIGNATORIES_DIR).mkdir(mode=0o700, exist_ok=True)

    with locked(kd):
        if (kd / IDENTITY_FILE).exists():
            raise IdentityError(f"{kd} already holds an identity", code="keys.identity_exists")
        root, signing = SigningKey.generate(), SigningKey.generate()
        decryption = DecryptionKey.generate(suite)
        write_private_key(kd / ROOT_FILE, root, passphrase, scrypt)
        sig_file = f"node-signing-{signing.key_id}.key"
        enc_file = f"node-encryption-{decryption.key_id}.key"
        write_private_key(kd / sig_file, signing, passphrase, scrypt)
        write_private_key(kd / enc_file, decryption, passphrase, scrypt)

        ca_key, ca_cert = generate_ca(party, name, now)
        tls_key, tls_cert = issue_node_cert(party, host, ca_key, ca_cert, now, tls_lifetime)
        write_tls_key(kd / TLS_CA_KEY, ca_key, passphrase)
        write_tls_key(kd / TLS_KEY, tls_key, passphrase)
        atomic_write(kd / TLS_CA_CERT, cert_pem(ca_cert), mode=PUBLIC_MODE)
        atomic_write(kd / TLS_CERT, cert_pem(tls_cert), mode=PUBLIC_MODE)

        until = None if key_lifetime is None else now + key_lifetime
        state: dict[str, Any] = {
            "format": IDENTITY_FORMAT,
            "party": party,
            "name": name,
            "endpoint": endpoint,
            "suite": suite,
            "created_at": format_time(now),
            "bundle_version": 0,
            "root": {"key_id": root.key_id, "public": b64e(root.public.public), "file": ROOT_FILE},
            "current_signing_key": signing.key_id,
            "current_encryption_key": decryption.key_id,
            "signing_keys": [_key_entry(signing.key_id, signing.public.public, sig_file, now, until)],
            "encryption_keys": [
                _key_entry(decryption.key_id, decryption.public.public, enc_file, now, until, suite=suite)
            ],
            "tls": {"ca_cert": TLS_CA_CERT, "ca_key": TLS_CA_KEY, "cert": TLS_CERT, "key": TLS_KEY},
            "revocations": [],
        }
        _publish(kd, state, root, now)
    return load_identity(data_dir, passphrase, now=now)


def recorded_bundle_version(data_dir: Path | str) -> int:
    """The bundle version ``identity.json`` records, read without loading any key (``load_identity``
    decrypts every key, each a scrypt with a passphrase). A rotation writes ``bundle.json`` first, so
    for a moment, or for good after a crash between the two writes, this is behind the bundle's."""
    return int(_read_state(keys_dir(data_dir)).get("bundle_version", 0))


def load_identity(
    data_dir: Path | str, passphrase: Passphrase | None = None, *, now: datetime | None = None
) -> Identity:
    """Load the node's current signing key and its decryption keys (newest first).

    With ``now``, decryption keys that expired before ``now`` are left out; without
    it every decryption key on record is loaded (to open archived envelopes).
    Revoked decryption keys are kept: messages already sealed to them must still
    open, and refusing to decrypt protects nothing once a key has leaked.
    The root key is not read here (see ``Identity.root``).
    """
    from protocol._envelope import NodeKeys  # imported late: keys must not need the envelope to manage files

    kd = keys_dir(data_dir)
    state = _read_state(kd)
    try:
        current = next(e for e in state["signing_keys"] if e["key_id"] == state["current_signing_key"])
        signing = read_signing_key(kd / current["file"], passphrase)
        decryption: list[DecryptionKey] = []
        entries = sorted(state["encryption_keys"], key=lambda e: e["valid_from"], reverse=True)
        for entry in entries:
            if now is not None:
                validity = _validity(entry)
                if validity.valid_until is not None and validity.valid_until <= _aware(now):
                    continue
            decryption.append(read_decryption_key(kd / entry["file"], passphrase))
    except (KeyError, StopIteration, TypeError) as exc:
        raise IdentityError(f"identity.json is inconsistent ({exc.__class__.__name__}: {exc})") from None
    if signing.key_id != state["current_signing_key"]:
        raise IdentityError("the current signing key file holds another key")
    if not decryption:
        raise IdentityError("no unexpired encryption key: rotate the node keys", code="keys.no_valid_key")
    return Identity(Path(data_dir), state, NodeKeys(state["party"], signing, tuple(decryption)), passphrase)


# --- bundles ---------------------------------------------------------------------------


def export_bundle(data_dir: Path | str) -> tuple[bytes, str]:
    """The current signed bundle and the root fingerprint to read to the peer out of band."""
    kd = keys_dir(data_dir)
    state = _read_state(kd)
    root = _root_public(state)
    data = (kd / BUNDLE_FILE).read_bytes()
    verify_bundle(data, pinned_root=root)
    return data, fingerprint(root)


def load_bundle_self(data_dir: Path | str) -> TrustedParty:
    """Our own published bundle, verified against the root recorded in identity.json."""
    root = _root_public(_read_state(keys_dir(data_dir)))
    return verify_bundle(export_bundle(data_dir)[0], pinned_root=root)


def import_bundle(data: bytes, fingerprint_typed: str, *, party: str | None = None) -> TrustedParty:
    """First import of a peer's bundle: trusted only if its root matches the fingerprint typed in."""
    trusted = verify_bundle(data, expected_fingerprint=fingerprint_typed)
    if party is not None and trusted.party != party:
        raise TrustError(f"bundle is for Party {trusted.party}, expected {party}", code="trust.wrong_party")
    return trusted


def import_bundle_update(data: bytes, current: TrustedParty) -> TrustedParty:
    """A newer bundle of a Party already trusted: same root, same Party, strictly greater version.

    The very same bytes again return ``current`` unchanged (a refetch is not an error).
    Revocations already applied to ``current`` are carried over.
    """
    if data == current.raw:
        return current
    new = verify_bundle(data, pinned_root=current.root)
    if new.party != current.party:
        raise TrustError(
            f"bundle update is for Party {new.party}, not {current.party}", code="trust.bad_bundle"
        )
    if new.bundle.version <= current.bundle.version:
        raise TrustError(
            f"bundle version {new.bundle.version} is not newer than the trusted version "
            f"{current.bundle.version}",
            code="trust.bundle_rollback",
        )
    return TrustedParty(new.bundle, new.raw, current.extra_revocations)


# --- rotation and revocation ----------------------------------------------------------------


def rotate_node_keys(
    data_dir: Path | str,
    now: datetime,
    overlap: timedelta,
    passphrase: Passphrase | None = None,
    *,
    key_lifetime: timedelta | None = DEFAULT_KEY_LIFETIME,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> bytes:
    """New node signing and encryption keys; the old ones stay valid until ``now + overlap``.

    Returns the new bundle (version + 1, root-signed), also written to bundle.json.
    The TLS certificate is unchanged.
    """
    _aware(now)
    if overlap < timedelta(0):
        raise ValueError("overlap must not be negative")
    kd = keys_dir(data_dir)
    with locked(kd):
        state = _read_state(kd)
        root = _load_root(kd, state, passphrase)
        suite = state["suite"]
        signing, decryption = SigningKey.generate(), DecryptionKey.generate(suite)
        sig_file = f"node-signing-{signing.key_id}.key"
        enc_file = f"node-encryption-{decryption.key_id}.key"
        write_private_key(kd / sig_file, signing, passphrase, scrypt)
        write_private_key(kd / enc_file, decryption, passphrase, scrypt)
        end = now + overlap
        for entry in (*state["signing_keys"], *state["encryption_keys"]):
            old = _validity(entry)
            if old.valid_until is None or old.valid_until > end:
                entry["valid_until"] = format_time(end)
        until = None if key_lifetime is None else now + key_lifetime
        state["signing_keys"].insert(
            0, _key_entry(signing.key_id, signing.public.public, sig_file, now, until)
        )
        state["encryption_keys"].insert(
            0, _key_entry(decryption.key_id, decryption.public.public, enc_file, now, until, suite=suite)
        )
        state["current_signing_key"] = signing.key_id
        state["current_encryption_key"] = decryption.key_id
        return _publish(kd, state, root, now)


def _signatory_ids(kd: Path) -> set[str]:
    sd = kd / SIGNATORIES_DIR
    return {p.stem for p in sd.glob("*.auth")} if sd.is_dir() else set()


def revoke_key(
    data_dir: Path | str,
    key_id: str,
    reason: str,
    now: datetime,
    passphrase: Passphrase | None = None,
    *,
    revoked_at: datetime | None = None,
) -> bytes:
    """Revoke a node or signatory key from ``now`` on; returns the signed revocation.

    ``revoked_at`` may be set earlier than ``now`` when a compromise is known to
    have started before it was discovered (never later: a revocation in the
    future would leave the key usable in the meantime). Anything signed by the
    key at or after that time is refused by the peer.

    The revocation is recorded in identity.json and published in a new bundle
    version. The current node keys cannot be revoked: rotate first, then revoke
    the old ones (so the node is never left without a usable key).
    """
    _aware(now)
    at = now if revoked_at is None else _aware(revoked_at)
    if at > now:
        raise ValueError("revoked_at must not be later than now")
    if not reason.strip():
        raise ValueError("a revocation needs a reason")
    kd = keys_dir(data_dir)
    with locked(kd):
        state = _read_state(kd)
        if key_id in (state["current_signing_key"], state["current_encryption_key"]):
            raise IdentityError(
                f"key {key_id} is this node's current key; rotate the node keys first, then revoke it",
                code="keys.current_key",
            )
        known = {e["key_id"] for e in (*state["signing_keys"], *state["encryption_keys"])} | _signatory_ids(
            kd
        )
        if key_id not in known:
            raise IdentityError(
                f"no node or signatory key {key_id} in this identity", code="keys.unknown_key"
            )
        if any(r["key_id"] == key_id for r in state["revocations"]):
            raise IdentityError(f"key {key_id} is already revoked", code="keys.already_revoked")
        root = _load_root(kd, state, passphrase)
        signed = issue_revocation(key_id, at, reason, root)
        state["revocations"].append(
            {"key_id": key_id, "revoked_at": format_time(at), "reason": reason, "signed": b64e(signed)}
        )
        _publish(kd, state, root, now)
        return signed


def issued_revocations(data_dir: Path | str) -> list[bytes]:
    """Every signed revocation this Party issued, oldest first."""
    state = _read_state(keys_dir(data_dir))
    return [b64d(r["signed"], what="revocation") for r in state["revocations"]]


def renew_tls_cert(
    data_dir: Path | str,
    now: datetime,
    passphrase: Passphrase | None = None,
    *,
    lifetime: timedelta = DEFAULT_TLS_LIFETIME,
) -> Path:
    """A fresh node TLS key and certificate from the Party's TLS CA (same SANs rule, same CA).

    The bundle does not change (it carries the CA, not the node certificate), so
    peers need nothing new. Returns the certificate path; a running server must
    reload its SSL context.
    """
    _aware(now)
    kd = keys_dir(data_dir)
    with locked(kd):
        state = _read_state(kd)
        ca_key = read_tls_key(kd / state["tls"]["ca_key"], passphrase)
        ca_cert = x509.load_pem_x509_certificate((kd / state["tls"]["ca_cert"]).read_bytes())
        key, cert = issue_node_cert(
            state["party"], endpoint_host(state["endpoint"]), ca_key, ca_cert, now, lifetime
        )
        write_tls_key(kd / state["tls"]["key"], key, passphrase, overwrite=True)
        cert_path: Path = kd / state["tls"]["cert"]
        atomic_write(cert_path, cert_pem(cert), mode=PUBLIC_MODE)
        return cert_path

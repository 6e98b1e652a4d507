"""Signatories (Art. 4): people who may sign requests for the Party, each with a key and a
root-signed authorisation naming the person, position and date range.

Files: ``data_dir/keys/signatories/<key_id>.key`` (0600) and ``<key_id>.auth``
(the DSSE authorisation bytes exactly as issued). Time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from protocol._primitives import SigningKey
from protocol._trust import Authorisation, issue_authorisation, verify_authorisation

from ._files import (
    DEFAULT_SCRYPT,
    PUBLIC_MODE,
    Passphrase,
    ScryptParams,
    atomic_write,
    read_signing_key,
    write_private_key,
)
from ._identity import (
    SIGNATORIES_DIR,
    IdentityError,
    _aware,
    _load_root,
    _read_state,
    keys_dir,
    load_bundle_self,
)


@dataclass(frozen=True)
class Signatory:
    """A signatory's private key with the authorisation that makes its signatures count."""

    key: SigningKey = field(repr=False)
    authorisation: bytes = field(repr=False)
    person: str
    position: str
    valid_from: date
    valid_until: date

    @property
    def key_id(self) -> str:
        return self.key.key_id


def _dir(data_dir: Path | str) -> Path:
    return keys_dir(data_dir) / SIGNATORIES_DIR


def add_signatory(
    data_dir: Path | str,
    person: str,
    position: str,
    valid_from: date,
    valid_until: date,
    now: datetime,
    passphrase: Passphrase | None = None,
    *,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> Signatory:
    """Create a signatory key and its root-signed authorisation (needs the root key)."""
    _aware(now)
    if not person.strip() or not position.strip():
        raise IdentityError("a signatory needs a person and a position", code="keys.bad_signatory")
    kd = keys_dir(data_dir)
    state = _read_state(kd)
    root = _load_root(kd, state, passphrase)
    key = SigningKey.generate()
    auth = Authorisation(
        party=state["party"],
        person=person,
        position=position,
        key=key.public,
        valid_from=valid_from,
        valid_until=valid_until,
        issued_at=now,
    )
    signed = issue_authorisation(auth, root)  # refuses an inverted date range
    sd = _dir(data_dir)
    sd.mkdir(mode=0o700, exist_ok=True)
    write_private_key(sd / f"{key.key_id}.key", key, passphrase, scrypt)
    atomic_write(sd / f"{key.key_id}.auth", signed, mode=PUBLIC_MODE, exclusive=True)
    return Signatory(key, signed, person, position, valid_from, valid_until)


def _authorisation(data_dir: Path | str, key_id: str) -> tuple[bytes, Authorisation]:
    path = _dir(data_dir) / f"{key_id}.auth"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"no signatory {key_id} in {_dir(data_dir)}", code="keys.unknown_signatory"
        ) from None
    auth = verify_authorisation(data, load_bundle_self(data_dir))
    if auth.key.key_id != key_id:
        raise IdentityError(
            f"{path} authorises key {auth.key.key_id}, not {key_id}", code="keys.bad_signatory"
        )
    return data, auth


def load_signatory(data_dir: Path | str, key_id: str, passphrase: Passphrase | None = None) -> Signatory:
    """The signatory's key and authorisation; the authorisation is verified against our own root."""
    if not key_id.isalnum():
        raise IdentityError(f"{key_id!r} is not a key id", code="keys.unknown_signatory")
    data, auth = _authorisation(data_dir, key_id)
    key = read_signing_key(_dir(data_dir) / f"{key_id}.key", passphrase)
    if key.public != auth.key:
        raise IdentityError(
            f"signatory key file {key_id} does not match its authorisation", code="keys.bad_signatory"
        )
    return Signatory(key, data, auth.person, auth.position, auth.valid_from, auth.valid_until)


def list_signatories(data_dir: Path | str) -> list[Authorisation]:
    """Every signatory's verified authorisation (no private keys read), by start date then person."""
    sd = _dir(data_dir)
    ids = sorted(p.stem for p in sd.glob("*.auth")) if sd.is_dir() else []
    auths = [_authorisation(data_dir, key_id)[1] for key_id in ids]
    return sorted(auths, key=lambda a: (a.valid_from, a.person, a.key.key_id))

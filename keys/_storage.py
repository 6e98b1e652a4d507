"""The node's storage key: encrypts what the node would otherwise keep in clear (drafts, their attachments).

32 random bytes in ``keys/storage.key``, mode 0600, created on first use (so
identities made before it existed get one too); encrypted under the node's key
passphrase when it has one, like every other private key. A copy of the
database alone then reveals no draft content; the key file lives beside the
other private keys and is backed up with them.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from protocol._encoding import parse_json
from protocol._errors import ProlinkError

from ._files import (
    DEFAULT_SCRYPT,
    KEY_FILE_FORMAT,
    KeyFileError,
    Passphrase,
    ScryptParams,
    atomic_write,
    check_private_file,
    decrypt_secret,
    encrypt_secret,
    locked,
)

STORAGE_KEY_FILE = "storage.key"
STORAGE_KEY_KIND = "storage-aes-256"
_SIZE = 32


def storage_key(
    data_dir: Path | str, passphrase: Passphrase | None = None, scrypt: ScryptParams = DEFAULT_SCRYPT
) -> bytes:
    """The node's storage key, created (mode 0600) if it does not exist yet.

    With ``passphrase`` (the one protecting the node's other private keys) a
    new key is stored encrypted like them (scrypt, AES-256-GCM); without, as its
    32 raw bytes. An existing file is read as it is: raw, or encrypted (then the
    passphrase is required).
    """
    kd = Path(data_dir) / "keys"
    path = kd / STORAGE_KEY_FILE
    if not path.exists():
        with locked(kd):
            if not path.exists():
                key = secrets.token_bytes(_SIZE)
                data = (
                    key
                    if passphrase is None
                    else encrypt_secret(
                        {"format": KEY_FILE_FORMAT, "kind": STORAGE_KEY_KIND, "key_id": _key_id(key)},
                        key,
                        passphrase,
                        scrypt,
                    )
                )
                atomic_write(path, data, mode=0o600, exclusive=True)
    check_private_file(path)
    data = path.read_bytes()
    if len(data) == _SIZE:
        return data
    return _decode(data, passphrase, str(path))


def _key_id(key: bytes) -> str:
    """Names the key in its file (so a decrypted key is checked to be the one written); reveals nothing."""
    return hashlib.sha256(b"prolink storage key id\x00" + key).hexdigest()[:32]


def _decode(data: bytes, passphrase: Passphrase | None, where: str) -> bytes:
    try:
        obj = parse_json(data, what=where)
    except ProlinkError:
        raise KeyFileError(f"{where} is not a {_SIZE}-byte storage key", code="keys.malformed") from None
    if (
        not isinstance(obj, dict)
        or obj.get("format") != KEY_FILE_FORMAT
        or obj.get("kind") != STORAGE_KEY_KIND
        or obj.get("encrypted") is not True
    ):
        raise KeyFileError(f"{where} is not a {_SIZE}-byte storage key", code="keys.malformed")
    key = decrypt_secret(obj, passphrase, where)
    if len(key) != _SIZE or _key_id(key) != obj.get("key_id"):
        raise KeyFileError(f"{where}: the key does not match its key id", code="keys.malformed")
    return key

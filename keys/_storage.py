"""The node's storage key: encrypts what the node keeps locally in clear otherwise (drafts, their attachments).

32 random bytes in ``keys/storage.key``, mode 0600, created on first use (so
identities made before it existed get one too). A copy of the database alone
then reveals no draft content; the key file lives beside the other private keys
and is backed up with them.
"""

from __future__ import annotations

from pathlib import Path

from ._files import KeyFileError, atomic_write, check_private_file, locked

STORAGE_KEY_FILE = "storage.key"
_SIZE = 32


def storage_key(data_dir: Path | str) -> bytes:
    """The node's storage key, created (mode 0600) if it does not exist yet."""
    import secrets

    kd = Path(data_dir) / "keys"
    path = kd / STORAGE_KEY_FILE
    if not path.exists():
        with locked(kd):
            if not path.exists():
                atomic_write(path, secrets.token_bytes(_SIZE), mode=0o600, exclusive=True)
    check_private_file(path)
    key = path.read_bytes()
    if len(key) != _SIZE:
        raise KeyFileError(f"{path} is not a {_SIZE}-byte storage key", code="keys.malformed")
    return key

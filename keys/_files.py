"""Private key files on disk: one JSON format for every private key of a node.

A key file is created mode 0600 from the start (``os.open`` with 0o600; never a
``chmod`` after the secret is already on disk), written to a temporary file,
fsynced and renamed into place, so a crash leaves either the old file or the
new one. Loading refuses a file that group or others may read.

With a passphrase the key is encrypted: scrypt (n=2**15, r=8, p=1 by default,
random salt) derives an AES-256-GCM key; the header fields (format, kind, key
id, KDF parameters, nonce) are the associated data, so none of them can be
changed without the decryption failing.

TLS private keys are PKCS#8 PEM instead (the ``ssl`` module loads PEM), with
the same 0600 rule.

This module must never read the clock or log key material.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from protocol._encoding import b64d, b64e, canonical_json, parse_json
from protocol._errors import ProlinkError, TrustError
from protocol._primitives import ED25519, SUITES, DecryptionKey, SigningKey

KEY_FILE_FORMAT = "prolink-private-key/1"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

Passphrase = str | bytes


class KeyFileError(TrustError):
    """A private key file that cannot be used: missing, too open, locked, wrong passphrase or malformed.

    Codes: ``keys.missing``, ``keys.bad_permissions``, ``keys.passphrase_required``,
    ``keys.wrong_passphrase``, ``keys.malformed``, ``keys.exists``.
    """

    code = "keys.malformed"


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost. The default is strong; tests pass a cheap ``n`` (e.g. 2**12)."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > MAX_SCRYPT_N:
            raise ValueError("scrypt n must be a power of two between 2 and 2**20")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("scrypt r must be 1..32 and p 1..16")


MAX_SCRYPT_N = 2**20
DEFAULT_SCRYPT = ScryptParams()

PrivateKey = SigningKey | DecryptionKey


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    if not data:
        raise KeyFileError("an empty passphrase is not a passphrase", code="keys.bad_passphrase")
    return data


# --- atomic writes --------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode``, fsync, rename.

    ``exclusive`` refuses to replace an existing file (``keys.exists``); the
    final step is then a hard link, which fails atomically if the name is taken.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(
                    f"{path} already exists; refusing to overwrite it", code="keys.exists"
                ) from None
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def check_private_file(path: Path) -> None:
    """Refuse a missing private file or one that group or others may access."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"private key file {path} does not exist", code="keys.missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file", code="keys.malformed")
    perms = stat.S_IMODE(st.st_mode)
    if perms & 0o077:
        raise KeyFileError(
            f"private key file {path} has mode {perms:04o}, readable or writable by group or others; "
            f"run: chmod 600 {path}",
            code="keys.bad_permissions",
        )


def _read_private(path: Path) -> bytes:
    check_private_file(path)
    return Path(path).read_bytes()


# --- the prolink key file -------------------------------------------------------


def _kind_of(key: PrivateKey) -> str:
    return ED25519 if isinstance(key, SigningKey) else key.suite


def _raw_of(key: PrivateKey) -> bytes:
    return key.seed if isinstance(key, SigningKey) else key.private


def _derive(passphrase: bytes, salt: bytes, params: ScryptParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase)


def encode_private_key(
    key: PrivateKey, passphrase: Passphrase | None = None, scrypt: ScryptParams = DEFAULT_SCRYPT
) -> bytes:
    """The bytes of a key file for ``key`` (encrypted when ``passphrase`` is given)."""
    header: dict[str, Any] = {"format": KEY_FILE_FORMAT, "kind": _kind_of(key), "key_id": key.key_id}
    if passphrase is None:
        return canonical_json({**header, "encrypted": False, "private": b64e(_raw_of(key))}) + b"\n"
    return encrypt_secret(header, _raw_of(key), passphrase, scrypt)


def encrypt_secret(
    header: dict[str, Any], raw: bytes, passphrase: Passphrase, scrypt: ScryptParams = DEFAULT_SCRYPT
) -> bytes:
    """A key file holding ``raw`` encrypted under ``passphrase``, bound to ``header`` (format, kind,
    key id)."""
    header = dict(header)
    salt, nonce = os.urandom(16), os.urandom(12)
    header.update(
        {
            "encrypted": True,
            "kdf": {"name": "scrypt", "n": scrypt.n, "r": scrypt.r, "p": scrypt.p, "salt": b64e(salt)},
            "aead": "AES-256-GCM",
            "nonce": b64e(nonce),
        }
    )
    aead_key = _derive(_passphrase_bytes(passphrase), salt, scrypt)
    ciphertext = AESGCM(aead_key).encrypt(nonce, raw, canonical_json(header))
    return canonical_json({**header, "ciphertext": b64e(ciphertext)}) + b"\n"


def decode_private_key(
    data: bytes, passphrase: Passphrase | None = None, *, where: str = "key file"
) -> PrivateKey:
    """Parse (and decrypt) key file bytes; the key id in the file must match the key."""
    try:
        obj = parse_json(data, what=where)
        if not isinstance(obj, dict) or obj.get("format") != KEY_FILE_FORMAT:
            raise KeyFileError(f"{where} is not a prolink private key file", code="keys.malformed")
        kind, key_id, encrypted = obj["kind"], obj["key_id"], obj["encrypted"]
        if kind != ED25519 and kind not in SUITES:
            raise KeyFileError(f"{where}: unknown key kind {kind!r}", code="keys.malformed")
        if encrypted is False:
            if set(obj) != {"format", "kind", "key_id", "encrypted", "private"}:
                raise KeyFileError(f"{where}: unexpected fields", code="keys.malformed")
            raw = b64d(obj["private"], what=f"{where} private")
        elif encrypted is True:
            if passphrase is None:
                raise KeyFileError(
                    f"{where} is encrypted; a passphrase is required", code="keys.passphrase_required"
                )
            raw = _decrypt(obj, _passphrase_bytes(passphrase), where)
        else:
            raise KeyFileError(f"{where}: 'encrypted' must be true or false", code="keys.malformed")
        key: PrivateKey = SigningKey(raw) if kind == ED25519 else DecryptionKey(kind, raw)
    except KeyFileError:
        raise
    except (ProlinkError, KeyError, TypeError, ValueError) as exc:
        detail = exc.message if isinstance(exc, ProlinkError) else exc.__class__.__name__
        raise KeyFileError(f"{where} is malformed ({detail})", code="keys.malformed") from None
    if key.key_id != key_id:
        raise KeyFileError(f"{where}: the key id in the file does not match the key", code="keys.malformed")
    return key


def decrypt_secret(obj: dict[str, Any], passphrase: Passphrase | None, where: str) -> bytes:
    """The secret in an encrypted key file (parsed), checked against its header; coded errors."""
    if passphrase is None:
        raise KeyFileError(f"{where} is encrypted; a passphrase is required", code="keys.passphrase_required")
    try:
        return _decrypt(obj, _passphrase_bytes(passphrase), where)
    except KeyFileError:
        raise
    except (ProlinkError, KeyError, TypeError, ValueError) as exc:
        detail = exc.message if isinstance(exc, ProlinkError) else exc.__class__.__name__
        raise KeyFileError(f"{where} is malformed ({detail})", code="keys.malformed") from None


def _decrypt(obj: dict[str, Any], passphrase: bytes, where: str) -> bytes:
    if set(obj) != {"format", "kind", "key_id", "encrypted", "kdf", "aead", "nonce", "ciphertext"}:
        raise KeyFileError(f"{where}: unexpected fields", code="keys.malformed")
    kdf = obj["kdf"]
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt" or obj["aead"] != "AES-256-GCM":
        raise KeyFileError(f"{where}: unsupported KDF or cipher", code="keys.malformed")
    if not all(isinstance(kdf.get(k), int) and not isinstance(kdf.get(k), bool) for k in ("n", "r", "p")):
        raise KeyFileError(f"{where}: bad scrypt parameters", code="keys.malformed")
    params = ScryptParams(kdf["n"], kdf["r"], kdf["p"])  # bounded: a hostile file cannot ask for 1 TiB
    salt = b64d(kdf["salt"], what=f"{where} salt")
    nonce = b64d(obj["nonce"], what=f"{where} nonce")
    if len(nonce) != 12 or len(salt) < 16:
        raise KeyFileError(f"{where}: bad nonce or salt", code="keys.malformed")
    ciphertext = b64d(obj["ciphertext"], what=f"{where} ciphertext")
    header = {k: v for k, v in obj.items() if k != "ciphertext"}
    try:
        return AESGCM(_derive(passphrase, salt, params)).decrypt(nonce, ciphertext, canonical_json(header))
    except InvalidTag:
        raise KeyFileError(
            f"wrong passphrase for {where} (or the file was altered)", code="keys.wrong_passphrase"
        ) from None


def write_private_key(
    path: Path, key: PrivateKey, passphrase: Passphrase | None = None, scrypt: ScryptParams = DEFAULT_SCRYPT
) -> None:
    """Write a new key file, mode 0600; never replaces an existing file."""
    atomic_write(Path(path), encode_private_key(key, passphrase, scrypt), mode=PRIVATE_MODE, exclusive=True)


def read_private_key(path: Path, passphrase: Passphrase | None = None) -> PrivateKey:
    return decode_private_key(_read_private(Path(path)), passphrase, where=str(path))


def read_signing_key(path: Path, passphrase: Passphrase | None = None) -> SigningKey:
    key = read_private_key(path, passphrase)
    if not isinstance(key, SigningKey):
        raise KeyFileError(f"{path} holds an encryption key, not a signing key", code="keys.malformed")
    return key


def read_decryption_key(path: Path, passphrase: Passphrase | None = None) -> DecryptionKey:
    key = read_private_key(path, passphrase)
    if not isinstance(key, DecryptionKey):
        raise KeyFileError(f"{path} holds a signing key, not an encryption key", code="keys.malformed")
    return key


# --- TLS private keys (PKCS#8 PEM) -------------------------------------------------


def write_tls_key(
    path: Path,
    key: ec.EllipticCurvePrivateKey,
    passphrase: Passphrase | None = None,
    *,
    overwrite: bool = False,
) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(_passphrase_bytes(passphrase))
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    atomic_write(Path(path), pem, mode=PRIVATE_MODE, exclusive=not overwrite)


def read_tls_key(path: Path, passphrase: Passphrase | None = None) -> ec.EllipticCurvePrivateKey:
    data = _read_private(Path(path))
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    if encrypted and passphrase is None:
        raise KeyFileError(f"{path} is encrypted; a passphrase is required", code="keys.passphrase_required")
    try:
        key = serialization.load_pem_private_key(
            data, _passphrase_bytes(passphrase) if encrypted and passphrase is not None else None
        )
    except (ValueError, TypeError):
        if encrypted:
            raise KeyFileError(f"wrong passphrase for {path}", code="keys.wrong_passphrase") from None
        raise KeyFileError(f"{path} is not a PEM private key", code="keys.malformed") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path} is not an ECDSA key", code="keys.malformed")
    return key


def tls_key_password(path: Path, passphrase: Passphrase | None) -> bytes | None:
    """What ``ssl.SSLContext.load_cert_chain`` needs as ``password`` (checks the file first)."""
    read_tls_key(path, passphrase)  # clear errors instead of an opaque ssl.SSLError
    return (
        None
        if passphrase is None or b"ENCRYPTED" not in Path(path).read_bytes()
        else _passphrase_bytes(passphrase)
    )


# --- locking ------------------------------------------------------------------------


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``directory/.lock`` for read-modify-write of identity files."""
    import fcntl

    fd = os.open(Path(directory) / ".lock", os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

"""Private key files: 0600 from creation, passphrase encryption, clear refusals."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keys import (
    DEFAULT_SCRYPT,
    KeyFileError,
    ScryptParams,
    read_decryption_key,
    read_private_key,
    read_signing_key,
    read_tls_key,
    write_private_key,
    write_tls_key,
)
from protocol._primitives import CLASSIC, PQ_HYBRID, DecryptionKey, SigningKey

CHEAP = ScryptParams(n=2**12)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_default_scrypt_is_strong_and_params_are_configurable() -> None:
    assert (DEFAULT_SCRYPT.n, DEFAULT_SCRYPT.r, DEFAULT_SCRYPT.p) == (2**15, 8, 1)
    assert ScryptParams(n=2**12).n == 2**12
    with pytest.raises(ValueError):
        ScryptParams(n=3000)
    with pytest.raises(ValueError):
        ScryptParams(n=2**21)


@pytest.mark.parametrize(
    "make",
    [SigningKey.generate, lambda: DecryptionKey.generate(PQ_HYBRID), lambda: DecryptionKey.generate(CLASSIC)],
)
@pytest.mark.parametrize("passphrase", [None, "correct horse battery staple"])
def test_round_trip(tmp_path: Path, make, passphrase) -> None:  # type: ignore[no-untyped-def]
    key = make()
    path = tmp_path / "k.key"
    write_private_key(path, key, passphrase, CHEAP)
    assert read_private_key(path, passphrase) == key
    obj = json.loads(path.read_text())
    assert obj["format"] == "prolink-private-key/1"
    assert obj["key_id"] == key.key_id
    assert obj["encrypted"] is (passphrase is not None)
    assert obj["kind"] == ("ed25519" if isinstance(key, SigningKey) else key.suite)


def test_file_is_0600_from_creation_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "k.key", SigningKey.generate())
        write_tls_key(tmp_path / "t.pem", ec.generate_private_key(ec.SECP256R1()))
    finally:
        os.umask(old)
    assert mode(tmp_path / "k.key") == 0o600
    assert mode(tmp_path / "t.pem") == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_encrypted_file_holds_no_plaintext(tmp_path: Path) -> None:
    key = SigningKey.generate()
    write_private_key(tmp_path / "k.key", key, "pw", CHEAP)
    obj = json.loads((tmp_path / "k.key").read_text())
    assert "private" not in obj
    assert obj["kdf"] == {**obj["kdf"], "name": "scrypt", "n": 2**12, "r": 8, "p": 1}
    assert obj["aead"] == "AES-256-GCM"
    assert key.seed not in (tmp_path / "k.key").read_bytes()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    write_private_key(tmp_path / "k.key", SigningKey.generate())
    with pytest.raises(KeyFileError) as exc:
        write_private_key(tmp_path / "k.key", SigningKey.generate())
    assert exc.value.code == "keys.exists"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as exc:
        read_private_key(tmp_path / "nope.key")
    assert exc.value.code == "keys.missing"
    assert "nope.key" in exc.value.message


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660])
def test_permissions_too_open_are_refused(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, SigningKey.generate())
    os.chmod(path, bad_mode)
    with pytest.raises(KeyFileError) as exc:
        read_private_key(path)
    assert exc.value.code == "keys.bad_permissions"
    assert str(path) in exc.value.message
    assert f"{bad_mode:04o}" in exc.value.message
    assert "chmod 600" in exc.value.message


def test_passphrase_required(tmp_path: Path) -> None:
    write_private_key(tmp_path / "k.key", SigningKey.generate(), "pw", CHEAP)
    with pytest.raises(KeyFileError) as exc:
        read_private_key(tmp_path / "k.key")
    assert exc.value.code == "keys.passphrase_required"


def test_wrong_passphrase(tmp_path: Path) -> None:
    write_private_key(tmp_path / "k.key", SigningKey.generate(), "pw", CHEAP)
    with pytest.raises(KeyFileError) as exc:
        read_private_key(tmp_path / "k.key", "not the pw")
    assert exc.value.code == "keys.wrong_passphrase"
    assert "wrong passphrase" in str(exc.value)


def test_header_is_bound_to_the_ciphertext(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, SigningKey.generate(), "pw", CHEAP)
    obj = json.loads(path.read_text())
    obj["key_id"] = "00" * 16
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError) as exc:
        read_private_key(path, "pw")
    assert exc.value.code == "keys.wrong_passphrase"  # the AAD no longer matches


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"format":"other"}', b'{"format":"prolink-private-key/1","kind":"ed25519"}'],
)
def test_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError) as exc:
        read_private_key(path)
    assert exc.value.code == "keys.malformed"


def test_key_id_must_match_the_key(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, SigningKey.generate())
    obj = json.loads(path.read_text())
    obj["key_id"] = SigningKey.generate().key_id
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError) as exc:
        read_private_key(path)
    assert exc.value.code == "keys.malformed"


def test_hostile_scrypt_cost_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, SigningKey.generate(), "pw", CHEAP)
    obj = json.loads(path.read_text())
    obj["kdf"]["n"] = 2**40
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError) as exc:
        read_private_key(path, "pw")
    assert exc.value.code == "keys.malformed"


def test_typed_readers_refuse_the_other_kind(tmp_path: Path) -> None:
    write_private_key(tmp_path / "s.key", SigningKey.generate())
    write_private_key(tmp_path / "d.key", DecryptionKey.generate(CLASSIC))
    with pytest.raises(KeyFileError):
        read_decryption_key(tmp_path / "s.key")
    with pytest.raises(KeyFileError):
        read_signing_key(tmp_path / "d.key")


def test_tls_key_pem(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_tls_key(tmp_path / "plain.pem", key)
    write_tls_key(tmp_path / "enc.pem", key, "pw")
    assert (
        (tmp_path / "plain.pem").read_bytes().startswith(b"-----BEGIN " + b"PRIVATE KEY-----")
    )  # split: no key-like text in git
    assert (tmp_path / "enc.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED " + b"PRIVATE KEY-----")
    assert read_tls_key(tmp_path / "enc.pem", "pw").private_numbers() == key.private_numbers()
    for code, pw in (("keys.passphrase_required", None), ("keys.wrong_passphrase", "nope")):
        with pytest.raises(KeyFileError) as exc:
            read_tls_key(tmp_path / "enc.pem", pw)
        assert exc.value.code == code
    os.chmod(tmp_path / "plain.pem", 0o644)
    with pytest.raises(KeyFileError) as exc:
        read_tls_key(tmp_path / "plain.pem")
    assert exc.value.code == "keys.bad_permissions"


# --- the storage key ------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir(mode=0o700)  # made by the identity, as in a node's data directory
    return tmp_path


def test_storage_key_with_a_passphrase_is_stored_encrypted_and_needs_it(data_dir: Path) -> None:
    tmp_path = data_dir
    from keys import storage_key

    cheap = ScryptParams(n=2**12)
    key = storage_key(tmp_path, passphrase="пароль", scrypt=cheap)
    path = tmp_path / "keys" / "storage.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in path.read_bytes() and b'"encrypted":true' in path.read_bytes()
    assert storage_key(tmp_path, passphrase="пароль") == key
    with pytest.raises(KeyFileError) as missing:
        storage_key(tmp_path)
    assert missing.value.code == "keys.passphrase_required"
    with pytest.raises(KeyFileError) as wrong:
        storage_key(tmp_path, passphrase="другой")
    assert wrong.value.code == "keys.wrong_passphrase"


def test_storage_key_without_a_passphrase_is_its_raw_bytes_and_stays_readable(data_dir: Path) -> None:
    tmp_path = data_dir
    from keys import storage_key

    key = storage_key(tmp_path)
    assert (tmp_path / "keys" / "storage.key").read_bytes() == key and len(key) == 32
    assert storage_key(tmp_path) == key
    assert storage_key(tmp_path, passphrase="пароль") == key  # an existing raw key is read as it is


def test_a_tampered_or_foreign_storage_key_file_is_refused(data_dir: Path) -> None:
    tmp_path = data_dir
    from keys import storage_key

    storage_key(tmp_path, passphrase="пароль", scrypt=ScryptParams(n=2**12))
    path = tmp_path / "keys" / "storage.key"
    text = path.read_text().replace('"kind":"storage-aes-256"', '"kind":"ed25519"')
    path.chmod(0o600)
    path.write_text(text)
    with pytest.raises(KeyFileError) as foreign:
        storage_key(tmp_path, passphrase="пароль")
    assert foreign.value.code == "keys.malformed"
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError) as short:
        storage_key(tmp_path)
    assert short.value.code == "keys.malformed"

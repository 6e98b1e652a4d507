"""Key operations through the admin layer on a node whose keys are passphrase-encrypted (admin endpoint).

Every operation that needs the root key takes its passphrase with the request;
without it, or with a wrong one, nothing changes. A running node picks the new
keys up from its key sync.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from keys import ScryptParams, generate_identity, load_identity
from service import admin
from service.errors import ServiceError
from service.migrate import upgrade
from service.server import build_node
from service.settings import Settings

PASS = "правильная лошадь батарейка скрепка"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROLINK_TEST_KEY_PASS", PASS)
    settings = Settings(
        data_dir=tmp_path / "kz",
        party="KZ",
        public_url="https://127.0.0.1:9443",
        key_passphrase_env="PROLINK_TEST_KEY_PASS",
    )
    generate_identity(
        settings.data_dir,
        "KZ",
        "Генеральная прокуратура",
        settings.public_url,
        datetime.now(UTC) - timedelta(days=1),
        passphrase=PASS,
        scrypt=ScryptParams(n=2**12),
    )
    settings.save()
    upgrade(settings.database_url)
    n = build_node(settings.data_dir)
    yield n
    n.engine.dispose()


def _code(call) -> str:
    with pytest.raises(ServiceError) as info:
        call()
    return info.value.code


def test_key_operations_need_the_root_passphrase(node) -> None:
    assert admin.keys_view(node)["root_key"] == "encrypted"
    before = node.identity.bundle_version
    old = node.identity.node_keys.signing.key_id

    assert (
        _code(lambda: admin.rotate_keys(node, timedelta(hours=1), None, "test", push=False))
        == "keys.passphrase_required"
    )
    assert (
        _code(lambda: admin.rotate_keys(node, timedelta(hours=1), "не тот", "test", push=False))
        == "keys.wrong_passphrase"
    )
    assert admin.keys_view(node)["bundle_version"] == before  # nothing changed

    result = admin.rotate_keys(node, timedelta(hours=1), PASS, "test", push=False)
    assert result["bundle_version"] == before + 1 and result["previous_signing_key"] == old
    assert node.identity.node_keys.signing.key_id == old  # the node switches through its key sync...
    assert admin.key_sync(node).check()["reloaded"] is True
    assert node.identity.node_keys.signing.key_id == result["signing_key"]  # ...here, at once (no peers)
    assert {k.key_id for k in node.identity.node_keys.decryption} >= {result["encryption_key"]}
    assert len(node.identity.node_keys.decryption) == 2  # the old key still opens what was sealed to it

    assert (
        _code(lambda: admin.revoke(node, old, "compromised", None, "test", push=False))
        == "keys.passphrase_required"
    )
    assert (
        _code(lambda: admin.revoke(node, result["signing_key"], "x", PASS, "test", push=False))
        == "keys.current_key"
    )
    revoked = admin.revoke(node, old, "compromised", PASS, "test", push=False)
    assert revoked["kind"] == "node" and revoked["bundle_version"] == before + 2

    today = date.today()
    assert (
        _code(
            lambda: admin.authorise_signatory(
                node, "Иванов И. И.", "прокурор", today, today + timedelta(days=30), None, "test"
            )
        )
        == "keys.passphrase_required"
    )
    sig = admin.authorise_signatory(
        node, "Иванов И. И.", "прокурор", today, today + timedelta(days=30), PASS, "test"
    )
    assert sig["valid_today"] is True and node.signatory(sig["key_id"]).person == "Иванов И. И."


def test_every_key_operation_is_an_audit_event(node) -> None:
    from sqlalchemy import select

    from service.db import session_scope
    from service.models import Event

    admin.rotate_keys(node, timedelta(hours=1), PASS, "user:7", push=False)
    admin.add_user(node, "Оператор 2", "operator", "confidential", "user:7")
    admin.add_agreement_version(node, date.today(), "Протокол № 1", {"originals_due_days": 14}, "user:7")
    with session_scope(node.engine, readonly=True) as s:
        events = s.execute(select(Event.type, Event.actor, Event.detail)).all()
    mine = [(t, d) for t, a, d in events if a == "user:7"]
    assert [t for t, _ in mine] == ["keys.rotated", "user.added", "agreement.version_added"]
    assert all("token" not in d and "passphrase" not in d for _, d in mine)


def test_the_storage_key_of_a_passphrase_node_is_encrypted_with_that_passphrase(node) -> None:
    from keys import KeyFileError, storage_key

    key = node.storage_key()  # drafts are sealed with it
    raw = (node.settings.data_dir / "keys" / "storage.key").read_bytes()
    assert key not in raw and b'"encrypted":true' in raw
    assert storage_key(node.settings.data_dir, passphrase=PASS) == key
    with pytest.raises(KeyFileError) as refused:
        storage_key(node.settings.data_dir)
    assert refused.value.code == "keys.passphrase_required"


def test_key_sync_read_between_the_two_writes_of_a_rotation_reloads_on_the_next_round(
    node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation writes bundle.json, then identity.json; a key sync round that runs in between reads
    the new bundle beside the old identity. It must not settle for that: the next round switches."""
    keys_dir = node.settings.data_dir / "keys"
    sync = admin.key_sync(node)
    sync.check()  # the sync has seen the bundle as it is before the rotation
    old_identity = (keys_dir / "identity.json").read_bytes()
    old_signing = node.identity.node_keys.signing.key_id

    result = admin.rotate_keys(node, timedelta(hours=1), PASS, "test", push=False)
    new_identity = (keys_dir / "identity.json").read_bytes()
    (keys_dir / "identity.json").write_bytes(old_identity)  # as if read before the second write landed

    loads = []
    monkeypatch.setattr(admin, "load_identity", lambda *a, **k: loads.append(1) or load_identity(*a, **k))
    for _ in range(3):  # (for good, had the rotation crashed between its writes)
        assert sync.check()["reloaded"] is False
    assert node.identity.node_keys.signing.key_id == old_signing
    assert loads == []  # no key loaded (a scrypt each) until identity.json has caught up

    (keys_dir / "identity.json").write_bytes(new_identity)  # the second write lands; bundle.json unchanged
    assert sync.check()["reloaded"] is True
    assert loads == [1]
    assert node.identity.bundle_version == result["bundle_version"]
    assert node.identity.node_keys.signing.key_id == result["signing_key"]

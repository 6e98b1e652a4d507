"""Node configuration: node.json in the data directory, PROLINK_* overrides, typed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import NODE_FILE, ConfigError, Settings


def test_defaults_derive_from_the_data_dir_and_party(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, party="KZ")
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'node.db'}"
    assert s.party_name == "KZ"
    assert s.public_url == "https://127.0.0.1:8443"
    assert (s.peer_host, s.peer_port, s.user_host, s.user_port) == ("127.0.0.1", 8443, "127.0.0.1", 8080)
    assert s.allow_tls12 is False
    assert s.max_envelope_bytes == 4 * 1024**3
    assert s.delivery_max_age_seconds == 3 * 24 * 3600
    assert s.key_passphrase() is None


def test_file_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / NODE_FILE).write_text(
        json.dumps(
            {
                "party": "BY",
                "party_name": "Prosecutor General's Office",
                "user_port": 9000,
                "public_url": "https://by.example:8443/",
                "worker_poll_seconds": 2.0,
            }
        )
    )
    s = Settings.load(tmp_path)
    assert (s.party, s.user_port, s.public_url, s.worker_poll_seconds) == (
        "BY",
        9000,
        "https://by.example:8443",
        2.0,
    )

    monkeypatch.setenv("PROLINK_USER_PORT", "9100")
    monkeypatch.setenv("PROLINK_ALLOW_TLS12", "true")
    s = Settings.load(tmp_path)
    assert (s.user_port, s.allow_tls12, s.party) == (9100, True, "BY")
    assert Settings.load(tmp_path, user_port=9200).user_port == 9200

    # The file of one node never leaks into another constructed later.
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path / "other")  # no party anywhere


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "node", party="KZ", user_port=8181, key_passphrase_env="KZ_PASS")
    path = s.save()
    stored = json.loads(path.read_text())
    assert "data_dir" not in stored and "database_url" not in stored  # the directory can move
    again = Settings.load(tmp_path / "node")
    assert again == s


def test_passphrase_comes_from_the_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(data_dir=tmp_path, party="KZ").key_passphrase() is None  # none asked for
    s = Settings(data_dir=tmp_path, party="KZ", key_passphrase_env="KZ_NODE_PASS")
    monkeypatch.setenv("KZ_NODE_PASS", "correct horse")
    assert s.key_passphrase() == b"correct horse"


@pytest.mark.parametrize("value", [None, ""])
def test_a_passphrase_variable_named_but_not_given_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """Never unencrypted keys, or keys that fail to open, because the passphrase did not reach the process."""
    s = Settings(data_dir=tmp_path, party="KZ", key_passphrase_env="KZ_NODE_PASS")
    if value is None:
        monkeypatch.delenv("KZ_NODE_PASS", raising=False)
    else:
        monkeypatch.setenv("KZ_NODE_PASS", value)
    with pytest.raises(ConfigError, match="KZ_NODE_PASS") as refused:
        s.key_passphrase()
    assert refused.value.code == "config.passphrase_missing"


@pytest.mark.parametrize(
    "bad",
    [
        {"party": "kz"},
        {"party": "KZ", "public_url": "http://kz.example"},
        {"party": "KZ", "peer_port": 0},
        {"party": "KZ", "delivery_backoff_base_seconds": 10, "delivery_backoff_max_seconds": 1},
        {"party": "KZ", "no_such_setting": 1},
    ],
)
def test_bad_values_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **bad)


def test_a_typo_in_node_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / NODE_FILE).write_text(json.dumps({"party": "KZ", "user_prot": 1}))
    with pytest.raises(ConfigError, match="user_prot: Extra inputs are not permitted"):
        Settings.load(tmp_path)


def test_init_leaves_the_configuration_and_database_readable_by_the_owner_only(tmp_path: Path) -> None:
    import os
    import stat

    from service.db import make_engine
    from service.migrate import upgrade

    old = os.umask(0o022)  # a usual login umask: files would be world-readable by default
    try:
        settings = Settings(data_dir=tmp_path / "kz", party="KZ")
        path = settings.save()
        upgrade(settings.database_url)
        make_engine(settings.database_url).dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(settings.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(settings.data_dir / "node.db").st_mode) == 0o600

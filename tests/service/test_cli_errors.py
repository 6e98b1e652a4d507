"""The ``prolink`` command refuses what it cannot use with ``error: CODE: message`` and exit status 2:
never a traceback, and nothing written."""

from __future__ import annotations

import getpass
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ConfigError, Settings


def prolink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60, check=False
    )


def assert_refused(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args", [["serve"], ["user", "list"], ["peer", "list"], ["bundle", "export", "-o", "b"]]
)
def test_a_directory_that_holds_no_node_is_named_as_such(tmp_path: Path, args: list[str]) -> None:
    result = prolink(*args, "--data-dir", str(tmp_path / "none"))
    assert_refused(result, "config.missing")
    assert "prolink init" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"party": "KZ", "party_name": "x", "public_url": "https://h:1", "user_port": "eighty"}',
            "user_port",
        ),
    ],
)
def test_a_broken_node_file_is_refused_and_left_as_it_was(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "node.json").write_text(text)
    result = prolink("serve", "--data-dir", str(tmp_path))
    assert_refused(result, "config.invalid")
    assert says in result.stderr
    assert (tmp_path / "node.json").read_text() == text
    with pytest.raises(ConfigError):
        Settings.load(tmp_path)


def test_init_with_a_value_out_of_range_creates_nothing(tmp_path: Path) -> None:
    result = prolink(
        "init",
        "--party",
        "KZ",
        "--name",
        "x",
        "--url",
        "https://127.0.0.1:8443",
        "--data-dir",
        str(tmp_path / "kz"),
        "--user-port",
        "99999",
    )
    assert_refused(result, "config.invalid")
    assert "user_port" in result.stderr
    assert not (tmp_path / "kz" / "node.json").exists()


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("cli") / "kz"
    result = prolink(
        "init",
        "--party",
        "KZ",
        "--name",
        "Генеральная прокуратура",
        "--url",
        "https://127.0.0.1:8443",
        "--data-dir",
        str(data_dir),
    )
    assert result.returncode == 0, result.stderr
    return data_dir


def _users_and_events(data_dir: Path) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(data_dir / "node.db") as db:
        return (
            db.execute("SELECT id, name, role FROM user_account ORDER BY id").fetchall(),
            db.execute("SELECT type, actor, object_id FROM event ORDER BY seq").fetchall(),
        )


def test_init_twice_is_refused_and_the_node_is_left_as_it_was(node_dir: Path) -> None:
    before = (node_dir / "node.json").read_bytes()
    result = prolink(
        "init", "--party", "KZ", "--name", "x", "--url", "https://127.0.0.1:9443", "--data-dir", str(node_dir)
    )
    assert_refused(result, "config.exists")
    assert (node_dir / "node.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--name", " ", "--role", "clerk"], "request.invalid"),
        (["--name", "Петров", "--role", "judge"], "user.bad_role"),
        (["--name", "Петров", "--role", "signatory", "--clearance", "secret"], "user.bad_clearance"),
    ],
)
def test_user_add_refuses_a_bad_user_and_writes_nothing(node_dir: Path, args: list[str], code: str) -> None:
    signatories = sorted((node_dir / "keys").rglob("*"))
    before = _users_and_events(node_dir)
    assert_refused(prolink("user", "add", "--data-dir", str(node_dir), *args), code)
    assert _users_and_events(node_dir) == before
    assert sorted((node_dir / "keys").rglob("*")) == signatories  # no signing key made for nothing


def test_a_user_added_from_the_command_line_is_in_the_audit_log(node_dir: Path) -> None:
    result = prolink("user", "add", "--data-dir", str(node_dir), "--name", "Сидоров", "--role", "clerk")
    assert result.returncode == 0, result.stderr
    users, events = _users_and_events(node_dir)
    user_id = next(u[0] for u in users if u[1] == "Сидоров")
    assert ("user.added", f"cli:{getpass.getuser()}", f"user:{user_id}") in events


@pytest.mark.parametrize(
    "args",
    [
        ["peer", "add", "{dir}/../no-such.bundle", "--fingerprint", "1"],
        ["bundle", "export", "-o", "{dir}/no/such/dir/kz.bundle"],
    ],
)
def test_a_file_that_cannot_be_read_or_written_is_named(node_dir: Path, args: list[str]) -> None:
    args = [a.replace("{dir}", str(node_dir)) for a in args]
    result = prolink(*args, "--data-dir", str(node_dir))
    assert_refused(result, "io.failed")
    assert "No such file or directory" in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:99999",
        "https://127.0.0.1:abc",
        "https://[::1",
        "https://127.0.0.1:0",
        "http://127.0.0.1:8443",
        "https://:8443",
    ],
)
def test_init_with_a_url_that_is_not_https_host_port_creates_nothing(tmp_path: Path, url: str) -> None:
    result = prolink("init", "--party", "KZ", "--name", "x", "--url", url, "--data-dir", str(tmp_path / "kz"))
    assert_refused(result, "config.invalid")
    assert not (tmp_path / "kz").exists()


def test_init_refuses_a_passphrase_variable_that_is_not_set_and_writes_no_key(tmp_path: Path) -> None:
    result = prolink(
        "init",
        "--party",
        "KZ",
        "--name",
        "x",
        "--url",
        "https://127.0.0.1:8443",
        "--data-dir",
        str(tmp_path / "kz"),
        "--passphrase-env",
        "PROLINK_TEST_UNSET_PASSPHRASE",
    )
    assert_refused(result, "config.passphrase_missing")
    assert not list((tmp_path / "kz").rglob("*.key"))
    assert not (tmp_path / "kz" / "node.json").exists()


def test_no_node_json_is_no_node_even_if_the_environment_gives_every_setting(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PROLINK_PARTY", "KZ")
    monkeypatch.setenv("PROLINK_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    result = prolink("user", "list", "--data-dir", str(tmp_path / "none"))
    assert_refused(result, "config.missing")
    assert not (tmp_path / "elsewhere.db").exists()  # nothing migrated anywhere


def test_a_bad_value_from_the_environment_is_blamed_on_its_variable(node_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROLINK_USER_PORT", "eighty")
    result = prolink("user", "list", "--data-dir", str(node_dir))
    assert_refused(result, "config.invalid")
    assert "user_port (from PROLINK_USER_PORT)" in result.stderr


def test_a_signatory_added_from_the_command_line_gets_a_key_and_an_audit_entry(node_dir: Path) -> None:
    keys_before = set((node_dir / "keys").rglob("*"))
    result = prolink(
        "user",
        "add",
        "--data-dir",
        str(node_dir),
        "--name",
        "Иванов И. И.",
        "--role",
        "signatory",
        "--position",
        "заместитель Генерального прокурора",
    )
    assert result.returncode == 0, result.stderr
    key_id = result.stdout.split("Signing key ")[1].split(".")[0]
    assert any(key_id in path.name for path in set((node_dir / "keys").rglob("*")) - keys_before)
    users, events = _users_and_events(node_dir)
    user_id = next(u[0] for u in users if u[1] == "Иванов И. И.")
    assert ("user.added", f"cli:{getpass.getuser()}", f"user:{user_id}") in events


@pytest.mark.parametrize("days", ["0", "99999999"])
def test_a_signatory_validity_out_of_range_is_a_usage_error(node_dir: Path, days: str) -> None:
    result = prolink(
        "user", "add", "--data-dir", str(node_dir), "--name", "П", "--role", "signatory", "--valid-days", days
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_a_peer_head_this_node_never_cosigned_is_refused_with_a_code(node_dir: Path, tmp_path: Path) -> None:
    result = prolink(
        "audit",
        "witnessed",
        "--data-dir",
        str(node_dir),
        "--party",
        "BY",
        "-o",
        str(tmp_path / "by-head.txt"),
    )
    assert_refused(result, "audit.no_head")
    assert not (tmp_path / "by-head.txt").exists()

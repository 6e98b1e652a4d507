"""The ``prolink`` command refuses what it cannot use with ``error: CODE: message`` and exit status 2:
never a traceback, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ConfigError, Settings


def prolink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def assert_refused(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [["serve"], ["user", "list"], ["peer", "list"],
                                  ["bundle", "export", "-o", "b"]])
def test_a_directory_that_holds_no_node_is_named_as_such(tmp_path: Path, args: list[str]) -> None:
    result = prolink(*args, "--data-dir", str(tmp_path / "none"))
    assert_refused(result, "config.missing")
    assert "prolink init" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "cannot be read"),
    ("[1, 2]", "expected a JSON object"),
    ('{"party": "KZ", "party_name": "x", "public_url": "https://h:1", "user_port": "eighty"}', "user_port"),
])
def test_a_broken_node_file_is_refused_and_left_as_it_was(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "node.json").write_text(text)
    result = prolink("serve", "--data-dir", str(tmp_path))
    assert_refused(result, "config.invalid")
    assert says in result.stderr
    assert (tmp_path / "node.json").read_text() == text
    with pytest.raises(ConfigError):
        Settings.load(tmp_path)


def test_init_with_a_value_out_of_range_creates_nothing(tmp_path: Path) -> None:
    result = prolink("init", "--party", "KZ", "--name", "x", "--url", "https://127.0.0.1:8443",
                     "--data-dir", str(tmp_path / "kz"), "--user-port", "99999")
    assert_refused(result, "config.invalid")
    assert "user_port" in result.stderr
    assert not (tmp_path / "kz" / "node.json").exists()

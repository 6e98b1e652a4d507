"""The exchange benchmark's delivery watcher (``bench.bench_exchange.DeliveryLog``) reads the node's log lines
as the delivery worker writes them: a message counts once its delivery ended, and not before."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.bench_exchange import DeliveryLog


def _line(**event: object) -> bytes:
    return json.dumps(event).encode() + b"\n"


def test_a_delivery_ends_with_its_batch_or_attempt_line_and_not_before(tmp_path: Path) -> None:
    log_file = tmp_path / "kz.log"
    log_file.write_bytes(_line(event="delivery_batch", messages={"old": "delivered"}))  # before: not read
    with DeliveryLog(log_file) as log, log_file.open("ab", buffering=0) as f:
        f.write(b"INFO:     uvicorn says something\n")
        f.write(_line(event="message_queued", message_id="a"))
        f.write(_line(event="delivery_batch", messages={"a": "delivered", "b": "rejected", "c": "queued"}))
        line = _line(event="delivery_attempt", message_id="d", outcome="delivered")
        f.write(line[:10])  # a line written in two pieces is read once whole
        log.wait_all(["a", "b"], timeout=10)
        f.write(line[10:])
        log.wait_all(["d"], timeout=10)
        assert not log.expect("c").is_set()  # queued again: its delivery has not ended
        assert not log.expect("old").is_set()
    assert log.error is None


def test_a_failed_reader_ends_every_wait_at_once_with_its_error(tmp_path: Path) -> None:
    with DeliveryLog(tmp_path) as log:  # a directory: the reader cannot open it
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="the log reader failed: IsADirectoryError"):
            log.wait_all(["x", "y"], timeout=30)
        assert time.monotonic() - started < 10  # at once, not after the timeout

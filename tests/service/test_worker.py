"""The delivery worker's claims: none while every peer's deliveries are full; the end of one claims again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from service import outbox
from service.settings import Settings
from service.worker import DeliveryWorker


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[DeliveryWorker]:
    node = SimpleNamespace(party="KZ", settings=Settings(data_dir=tmp_path, party="KZ"))
    w = DeliveryWorker(node)  # type: ignore[arg-type] - only settings and party are read here
    yield w
    w.close()


def claim_of(peer: str) -> SimpleNamespace:
    return SimpleNamespace(peer=peer, envelope_size=4096)


@pytest.fixture
def claims(worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The worker's node has peers BY and AM and an empty outbox; each claim's ``busy_peers`` is listed."""
    seen: list[list[str]] = []

    def claim_due(*args: object, busy_peers: list[str], **kwargs: object) -> outbox.ClaimResult:
        seen.append(list(busy_peers))
        return outbox.ClaimResult([], False)

    monkeypatch.setattr(outbox, "claim_due", claim_due)
    monkeypatch.setattr(worker.node, "clock", lambda: datetime.now(UTC), raising=False)
    monkeypatch.setattr(worker.node, "engine", None, raising=False)
    monkeypatch.setattr(worker.node, "peer_parties", lambda: ["BY", "AM"], raising=False)
    return seen


def test_the_end_of_a_delivery_to_a_full_peer_wakes_the_worker(
    worker: DeliveryWorker, claims: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = worker.node.settings.delivery_batches_per_peer
    worker._small_in_flight["BY"] = limit
    assert worker._dispatch() == 0  # a claim meanwhile passed over BY's rows
    assert claims == [["BY"]]
    worker._claim_wanted = False
    worker._wake.clear()

    monkeypatch.setattr(worker, "deliver_group", lambda group: ["delivered"])
    worker._slots.acquire()
    worker._run_group([claim_of("BY")], small=True)  # a delivery to BY ends: its queued rows are claimed now
    assert worker._wake.is_set() and worker._claim_wanted
    assert worker._small_in_flight["BY"] == limit - 1


def test_no_claim_is_made_while_every_peer_has_its_deliveries_full(
    worker: DeliveryWorker, claims: list[list[str]]
) -> None:
    slots = worker.node.settings.delivery_concurrency
    full = worker.node.settings.delivery_batches_per_peer
    worker._small_in_flight["BY"] = worker._small_in_flight["AM"] = full

    assert worker._dispatch() == 0
    assert claims == []  # AM and BY are both full: their rows wait, and there is no one else
    assert worker._again_after_delivery  # the end of one of their deliveries claims again
    assert all(worker._slots.acquire(blocking=False) for _ in range(slots))  # every slot was given back
    for _ in range(slots):
        worker._slots.release()

    worker._small_in_flight["AM"] -= 1  # AM has room: its rows are claimed (BY's are passed over)
    assert worker._dispatch() == 0
    assert claims == [["BY"]]


@pytest.mark.parametrize("content", [b"not json", b"[" * 100_000, b"\xff"])
def test_an_answer_that_is_no_json_is_no_answer(content: bytes) -> None:
    """A peer's answer that is not JSON, or nested deeper than the parser goes (which raised out of the
    delivery before: no attempt counted, the claims left leased), reads as none: each envelope then gets
    a failed attempt (``deliver_batch``)."""
    import httpx

    from service.errors import peer_error_code
    from service.worker import _json_or_none

    assert _json_or_none(httpx.Response(200, content=content)) is None
    assert peer_error_code(httpx.Response(400, content=content)) == ""  # (a refused batch's code, say)


def test_a_batch_without_answers_logs_each_message_with_its_new_state(
    worker: DeliveryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an answered batch does: an operator (and the exchange benchmark) follows each message by its id,
    also when the batch failed as a whole and one of its messages was parked by it."""
    import httpx
    from structlog.testing import capture_logs

    from service import worker as worker_module

    def unreachable(peer: str) -> None:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(worker_module, "peer_is_active", lambda node, peer: True)
    monkeypatch.setattr(worker, "_client", unreachable)
    monkeypatch.setattr(worker, "_failed_many", lambda claims, error: ["queued", "parked"])
    claims = [SimpleNamespace(peer="BY", message_id=m) for m in ("m-1", "m-2")]
    with capture_logs() as logs:
        assert worker.deliver_batch(claims) == ["queued", "parked"]  # type: ignore[arg-type]
    (line,) = [e for e in logs if e["event"] == "delivery_batch"]
    assert line["messages"] == {"m-1": "queued", "m-2": "parked"}
    assert line["peer"] == "BY" and line["error"].startswith("transport: ConnectError")

"""Art. 4-5 lifecycle: messages applied together (a batch, a group of sends) end as one by one would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from bench.bench_exchange import russian_document
from protocol import Document, LifecycleError
from service import cases
from service.case_models import Thread
from service.compose import compose
from service.db import make_engine, session_scope
from service.migrate import upgrade

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def request(at: datetime = T0) -> Document:
    return compose(
        russian_document("BY"),
        message_id=str(uuid.uuid4()),
        sender_party="KZ",
        now=at,
        attachments=[],
        answered=None,
    )


def reply(to: Document, fields: dict[str, Any], at: datetime) -> Document:
    doc = {
        "recipient_party": "KZ",
        "thread_id": to.thread_id,
        "in_reply_to": to.id,
        "confidentiality": "confidential",
        **fields,
    }
    return compose(
        doc, message_id=str(uuid.uuid4()), sender_party="BY", now=at, attachments=[], answered=None
    )


def threads(engine: Engine) -> list[dict[str, Any]]:
    with session_scope(engine, readonly=True) as s:
        rows = s.execute(select(Thread).order_by(Thread.id)).scalars().all()  # type: ignore[arg-type]
        return [{k: v for k, v in r.model_dump().items() if k != "id"} | {"id": r.id} for r in rows]


def test_art5_a_request_and_its_replies_in_one_batch_end_as_applied_one_by_one(engine: Engine) -> None:
    first, second = request(), request()
    accepted = reply(first, {"kind": "acceptance"}, T0 + timedelta(minutes=1))
    delayed = reply(
        first,
        {
            "kind": "delay_notice",
            "reason": "Требуется время на сбор сведений.",
            "new_expected_date": (T0 + timedelta(days=60)).date().isoformat(),
        },
        T0 + timedelta(minutes=2),
    )
    done = reply(
        second, {"kind": "execution_result", "summary": "Сведения прилагаются."}, T0 + timedelta(minutes=3)
    )
    sequence = [(d, d.created_at) for d in (first, second, accepted, delayed)]
    with session_scope(engine) as s:
        effects = cases.apply_many(s, "BY", sequence, originals_due_days=30)
    assert [(e.state_before, e.state_after) for e in effects] == [
        (None, "sent"),
        (None, "sent"),
        ("sent", "accepted"),
        ("accepted", "delayed"),
    ]
    assert all(e.thread_purpose_code == first.purpose_code for e in effects)
    # A later call reads what this one wrote: a result before the thread was accepted is refused.
    with pytest.raises(LifecycleError) as exc, session_scope(engine) as s:
        cases.apply_many(s, "BY", [(done, done.created_at)], originals_due_days=30)
    assert exc.value.code == "lifecycle.transition_not_allowed"
    batched = threads(engine)

    with session_scope(engine) as s:  # the same messages again, one transaction each
        s.execute(Thread.__table__.delete())  # type: ignore[attr-defined]
    for doc, at in sequence:
        with session_scope(engine) as s:
            cases.apply_many(s, "BY", [(doc, at)], originals_due_days=30)
    assert threads(engine) == batched
    by_id = {t["id"]: t for t in batched}
    assert by_id[first.id]["state"] == "delayed" and by_id[first.id]["last_message_id"] == delayed.id
    assert by_id[first.id]["due_on"] == (T0 + timedelta(days=60)).date()
    assert by_id[second.id]["state"] == "sent"


def test_art5_one_message_out_of_step_refuses_the_whole_call_and_writes_nothing(engine: Engine) -> None:
    first = request()
    orphan = reply(request(), {"kind": "acceptance"}, T0)  # its request never came
    for docs, code in (
        ([first, orphan], "lifecycle.unknown_thread"),
        ([first, first], "lifecycle.thread_exists"),
    ):
        with pytest.raises(LifecycleError) as exc, session_scope(engine) as s:
            cases.apply_many(s, "BY", [(d, d.created_at) for d in docs], originals_due_days=30)
        assert exc.value.code == code
        assert threads(engine) == []


@pytest.mark.postgres
def test_the_thread_read_locks_the_threads_it_finds_postgres(postgres_url: str) -> None:
    """Two replicas moving one thread queue on it: ``apply_many``'s read takes the thread's row lock, before
    any write of its own."""
    upgrade(postgres_url)
    engine, other = make_engine(postgres_url), make_engine(postgres_url)
    try:
        first = request()
        with session_scope(engine) as s:
            cases.apply_many(s, "BY", [(first, first.created_at)], originals_due_days=30)
        later = reply(first, {"kind": "acceptance"}, T0 + timedelta(minutes=1))
        with session_scope(engine) as s:
            deferred: list[tuple[Any, Any]] = []  # the thread's update not run: only the read holds it
            cases.apply_many(s, "BY", [(later, later.created_at)], originals_due_days=30, defer=deferred)
            assert deferred
            with pytest.raises(OperationalError) as exc, other.connect() as c:
                c.execute(text("SET lock_timeout = '200ms'"))
                c.execute(text("SELECT id FROM thread WHERE id = :id FOR UPDATE"), {"id": first.id})
            assert "lock" in str(exc.value).lower()
        with other.connect() as c:  # committed: free again
            c.execute(text("SELECT id FROM thread WHERE id = :id FOR UPDATE"), {"id": first.id})
    finally:
        engine.dispose()
        other.dispose()

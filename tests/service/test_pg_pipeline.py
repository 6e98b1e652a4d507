"""A store transaction's statements reach PostgreSQL together (``service.pg_pipeline``).

psycopg sends a pipeline's statements one turn each, a ``poll`` and a ``send``
per statement (per row of an ``executemany``), each turn letting go of the
interpreter. What these tests pin down: with this psycopg the buffering is in
use; a transaction of many statements and rows is sent in one or two turns,
whatever their number; what the server stores, and the errors it raises, are
those of psycopg's own pipeline.
"""

from __future__ import annotations

import psycopg
import psycopg._pipeline_base
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select as select_rows

from service.db import commit_pipelined, read_together, session_scope
from service.models import Meta
from service.pg_pipeline import BUFFERING, buffered_pipeline

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def turns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times psycopg's pipeline loop runs (each: at least a poll and a send)."""
    counted: list[int] = []
    communicate = psycopg._pipeline_base.pipeline_communicate

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        counted.append(1)
        return communicate(*args, **kwargs)

    monkeypatch.setattr(psycopg._pipeline_base, "pipeline_communicate", counting)
    return counted


def _meta(engine: Engine) -> dict[str, str]:
    with session_scope(engine, readonly=True) as s:
        return {m.key: m.value for m in s.exec(select_rows(Meta).where(Meta.key.startswith("buf-")))}  # type: ignore[attr-defined]


def test_this_psycopg_has_what_the_buffering_needs(engine: Engine) -> None:
    assert BUFFERING
    with engine.connect() as conn:
        pg = conn.connection.driver_connection
        with buffered_pipeline(pg) as pipeline:  # type: ignore[arg-type]
            assert type(pipeline).__name__ == "_BufferedPipeline"


def test_a_transaction_of_many_statements_and_rows_is_sent_in_a_turn_or_two(
    engine: Engine, turns: list[int]
) -> None:
    rows = [{"key": f"buf-{n:02d}", "value": str(n)} for n in range(40)]
    with session_scope(engine) as s:
        read = read_together(s, [(select(Meta.value).where(Meta.key == "buf-none"), {})] * 5)
        assert read == [[]] * 5 and len(turns) <= 2
        turns.clear()
        commit_pipelined(
            s,
            [
                (insert(Meta), rows[:20]),
                *[(insert(Meta), row) for row in rows[20:]],
                (update(Meta).where(Meta.key == "buf-00").values(value="first"), {}),
            ],
        )
        assert len(turns) <= 2  # psycopg's own pipeline: one turn per row, 42 and more

    assert _meta(engine) == {**{r["key"]: r["value"] for r in rows}, "buf-00": "first"}


def test_an_error_in_the_middle_is_raised_as_psycopg_raises_it_and_nothing_is_kept(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Meta(key="buf-taken", value="1"))
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        read_together(s, [(select(Meta.value).where(Meta.key == "buf-taken"), {})])
        commit_pipelined(
            s,
            [
                (insert(Meta), [{"key": "buf-a", "value": "a"}]),
                (insert(Meta), [{"key": "buf-taken", "value": "again"}]),  # the key is taken
                (insert(Meta), [{"key": "buf-b", "value": "b"}]),
            ],
        )
    assert _meta(engine) == {"buf-taken": "1"}  # neither the rows before the error nor those after it
    with session_scope(engine) as s:  # and the pooled connection works on
        read_together(s, [(select(Meta.value).where(Meta.key == "buf-taken"), {})])
        commit_pipelined(s, [(insert(Meta), [{"key": "buf-c", "value": "c"}])])
    assert _meta(engine) == {"buf-taken": "1", "buf-c": "c"}


def test_a_pipeline_synced_midway_sends_what_was_queued_and_goes_on(engine: Engine) -> None:
    with engine.connect() as conn:
        pg = conn.connection.driver_connection
        pg.autocommit = True  # type: ignore[union-attr]
        with buffered_pipeline(pg) as pipeline:  # type: ignore[arg-type]
            first = pg.execute("SELECT 1")  # type: ignore[union-attr]
            pipeline.sync()
            assert first.fetchall() == [(1,)]
            second = pg.execute("SELECT 2")  # type: ignore[union-attr]
        assert second.fetchall() == [(2,)]

"""Art. 14: the agreement's state is read once per transaction, and a notice added meanwhile still counts."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy.engine import Engine

from service.case_models import TerminationNotice
from service.cases import agreement_state, termination_received_on
from service.db import session_scope

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def notice(received_on: date) -> TerminationNotice:
    return TerminationNotice(received_on=received_on, given_by="BY", source="operator", recorded_at=NOW)


def test_art14_a_notice_added_after_the_state_was_read_counts_in_the_same_transaction(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert agreement_state(s, NOW.date()) == "in_force"
        assert termination_received_on(s) is None  # read again: the transaction's earlier answer
        s.add(notice(date(2026, 2, 20)))
        assert termination_received_on(s) == date(2026, 2, 20)
        assert agreement_state(s, NOW.date()) != "in_force"
    with session_scope(engine) as s:  # and the next transaction reads it from the database
        assert termination_received_on(s) == date(2026, 2, 20)


def test_art14_a_notice_rolled_back_with_its_savepoint_does_not_count(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert termination_received_on(s) is None
        savepoint = s.begin_nested()
        s.add(notice(date(2026, 2, 20)))
        assert termination_received_on(s) == date(2026, 2, 20)
        savepoint.rollback()
        assert termination_received_on(s) is None


def test_art14_a_notice_committed_by_another_transaction_counts_in_the_next(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert termination_received_on(s) is None
    with session_scope(engine) as other:
        other.add(notice(date(2026, 2, 21)))
    with session_scope(engine) as s:
        assert termination_received_on(s) == date(2026, 2, 21)

"""What each message does to the node's records, the same on the sending and the receiving side.

``apply`` runs inside the transaction that stores a message (sent or received),
so a message and its effects commit or vanish together. It moves the thread by
the protocol's one lifecycle table (Art. 4-6, 14) and keeps the records the
agreement asks for: originals owed by post (Art. 4), contact directories
(Art. 11), termination notices (Art. 14). A message the table forbids raises
``LifecycleError``: a sender gets a 409, a receiver answers with a signed rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from protocol import REQUESTED, REQUESTING, Document, LifecycleError, agreement_state_on, document_to_json, next_state
from service.case_models import DirectoryVersion, Original, TerminationNotice, Thread


@dataclass(frozen=True)
class Effect:
    """What ``apply`` did, for the audit record and the API answer."""

    thread_id: str
    state_before: str | None
    state_after: str
    sender_role: str


def termination_received_on(session: Session) -> date | None:
    return session.execute(select(func.min(TerminationNotice.received_on))).scalar_one_or_none()


def agreement_state(session: Session, today: date) -> str:
    return agreement_state_on(today, termination_received_on(session))


def agreement_ends_on(session: Session) -> date | None:
    received = termination_received_on(session)
    return None if received is None else received + timedelta(days=60)


def apply(session: Session, me: str, doc: Document, now: datetime, *, originals_due_days: int) -> Effect:
    """Check ``doc`` (sent or received by Party ``me``) against its thread and record its effects.

    Raises ``LifecycleError``.
    """
    opens = doc.thread_id == doc.id
    thread = session.get(Thread, doc.thread_id, with_for_update=True)
    if thread is None and not opens:
        raise LifecycleError(f"no thread {doc.thread_id} is known here", code="lifecycle.unknown_thread")
    if thread is not None and opens:
        raise LifecycleError(f"thread {doc.thread_id} already exists", code="lifecycle.thread_exists")
    requesting = thread.requesting_party if thread is not None else (
        doc.sender_party if doc.kind == "request" else doc.recipient_party)
    peer_of_thread = doc.recipient_party if doc.sender_party == me else doc.sender_party
    if thread is not None and {me, thread.peer} != {doc.sender_party, doc.recipient_party}:
        raise LifecycleError("the message's Parties are not the thread's", code="lifecycle.wrong_parties")
    role = REQUESTING if doc.sender_party == requesting else REQUESTED
    before = thread.state if thread is not None else None
    after = next_state(before, doc.kind, role, agreement_state(session, now.date()),
                       refusal_scope=getattr(doc, "scope", None))
    if thread is None:
        thread = Thread(id=doc.id, kind=doc.kind, requesting_party=requesting, peer=peer_of_thread,
                        state=after, urgent=bool(getattr(doc, "urgent", False)),
                        direction=getattr(doc, "direction", None), form=getattr(doc, "form", None),
                        confidentiality=doc.confidentiality, due_on=getattr(doc, "expected_execution_date", None),
                        opened_at=now, updated_at=now, last_message_id=doc.id)
        session.add(thread)
    else:
        thread.state, thread.updated_at, thread.last_message_id = after, now, doc.id
        new_date = getattr(doc, "new_expected_date", None)
        if doc.kind == "delay_notice" and new_date is not None:
            thread.due_on = new_date
        session.add(thread)
    _KIND_EFFECTS.get(doc.kind, _nothing)(session, doc, now, originals_due_days)
    return Effect(doc.thread_id, before, after, role)


def _nothing(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    return None


def _request(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    if getattr(doc, "urgent", False):
        session.add(Original(thread_id=doc.id, owed_by=doc.sender_party, owed_to=doc.recipient_party,
                             due_on=doc.created_at.date() + timedelta(days=due_days), created_at=now,
                             updated_at=now))


def _original(session: Session, doc: Document) -> Original:
    original = session.get(Original, doc.thread_id, with_for_update=True)
    if original is None:
        raise LifecycleError("no original is owed for this request (it was not urgent)",
                             code="lifecycle.no_original_owed")
    return original


def _original_dispatched(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    original = _original(session, doc)
    if doc.sender_party != original.owed_by:
        raise LifecycleError("only the Party that owes the original dispatches it", code="lifecycle.wrong_side")
    original.dispatched_on = doc.dispatched_on  # type: ignore[attr-defined]
    original.tracking_number = doc.tracking_number  # type: ignore[attr-defined]
    original.updated_at = now
    session.add(original)


def _original_received(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    original = _original(session, doc)
    if doc.sender_party != original.owed_to:
        raise LifecycleError("only the Party the original is owed to confirms it", code="lifecycle.wrong_side")
    original.received_on = doc.received_on  # type: ignore[attr-defined]
    original.matches_electronic = doc.matches_electronic  # type: ignore[attr-defined]
    original.updated_at = now
    session.add(original)


def _directory_update(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    version = doc.version  # type: ignore[attr-defined]
    latest = session.execute(select(func.max(DirectoryVersion.version))
                             .where(DirectoryVersion.party == doc.sender_party)).scalar_one_or_none()
    if latest is not None and version <= latest:
        raise LifecycleError(f"directory version {version} is not newer than {latest}",
                             code="lifecycle.directory_not_newer")
    body = document_to_json(doc)
    directory: dict[str, Any] = {"coordinating_unit": body["coordinating_unit"], "contacts": body["contacts"]}
    session.add(DirectoryVersion(party=doc.sender_party, version=version, message_id=doc.id,
                                 directory=directory, recorded_at=now))


def _termination_notice(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    session.add(TerminationNotice(received_on=doc.notice_received_on,  # type: ignore[attr-defined]
                                  given_by=doc.sender_party, source="message", message_id=doc.id, recorded_at=now))


_KIND_EFFECTS = {
    "request": _request,
    "original_dispatched": _original_dispatched,
    "original_received": _original_received,
    "directory_update": _directory_update,
    "termination_notice": _termination_notice,
}

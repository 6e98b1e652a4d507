"""What each message does to the node's records, the same on the sending and the receiving side.

``apply_many`` runs inside the transaction that stores a message (sent or received),
so a message and its effects commit or vanish together. It moves the thread by
the protocol's one lifecycle table (Art. 4-6, 14) and keeps the records the
agreement asks for: originals owed by post (Art. 4), contact directories
(Art. 11), termination notices (Art. 14). A message the table forbids raises
``LifecycleError``: a sender gets a 409, a receiver answers with a signed rejection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import any_, bindparam, event, func, insert, select, update
from sqlmodel import Session

from protocol import (
    REQUESTED,
    REQUESTING,
    Document,
    LifecycleError,
    agreement_state_on,
    document_to_json,
    next_state,
)
from service.case_models import Consent, DirectoryVersion, Original, TerminationNotice, Thread
from service.db import write_or_defer
from service.models import Message


@dataclass(frozen=True)
class Effect:
    """What ``apply_many`` did for a message, for the audit record and the API answer."""

    thread_id: str
    state_before: str | None
    state_after: str
    sender_role: str
    #: The thread's purpose code and case number (Art. 7), as it stands after the message.
    thread_purpose_code: str | None = None
    thread_case_number: str | None = None


_thread = Thread.__table__  # type: ignore[attr-defined]
# Built once: every message sent or received runs them.
_THREAD_COLUMNS = (
    _thread.c.id,
    _thread.c.requesting_party,
    _thread.c.peer,
    _thread.c.state,
    _thread.c.purpose_code,
    _thread.c.case_number,
)
_THREAD_KEYS = tuple(c.key for c in _THREAD_COLUMNS)
_THREADS_FOR_UPDATE = (
    select(*_THREAD_COLUMNS).where(_thread.c.id.in_(bindparam("ids", expanding=True))).with_for_update()
)
# The same for ``db.read_together`` on PostgreSQL, whose parameters cannot expand: the ids as one array.
_THREADS_FOR_UPDATE_ANY = (
    select(*_THREAD_COLUMNS).where(_thread.c.id == any_(bindparam("ids"))).with_for_update()
)
_INSERT_THREAD = insert(_thread).inline()  # no RETURNING: may be pipelined
# A thread a message moves on: built once, so that its compiled form is kept (``db.write_pipelined``).
_MOVE_THREAD = (
    update(_thread)
    .where(_thread.c.id == bindparam("t_id"))
    .values(
        state=bindparam("t_state"),
        updated_at=bindparam("t_updated_at"),
        last_message_id=bindparam("t_last_message_id"),
    )
)
_MOVE_THREAD_AND_DUE_DATE = _MOVE_THREAD.values(due_on=bindparam("t_due_on"))
_FIRST_TERMINATION = select(func.min(TerminationNotice.__table__.c.received_on))  # type: ignore[attr-defined]


_TERMINATION_READ = "prolink_termination_received_on"  # session.info: (transaction, date) last read


def termination_received_on(session: Session) -> date | None:
    """When the first termination notice was received (Art. 14), as this transaction sees it.

    Read once per transaction (or savepoint), not once per message of a batch: a
    notice added to the session since drops what was read (``_notice_added``).
    """
    read = session.info.get(_TERMINATION_READ)
    if read is not None and read[0] is _innermost(session):
        return read[1]  # type: ignore[no-any-return]
    session.flush()  # a notice added in this transaction counts (no-op when nothing is pending)
    received: date | None = session.connection().execute(_FIRST_TERMINATION).scalar_one_or_none()
    session.info[_TERMINATION_READ] = (_innermost(session), received)
    return received


def reads_for(
    docs: Sequence[tuple[Document, datetime]], *, postgresql: bool
) -> list[tuple[Any, dict[str, Any]]]:
    """What ``apply_many`` reads for ``docs``, for the caller to read with its own reads at the start of its
    transaction (``db.read_together``): the threads they name (locked), then the first termination notice.
    Their rows go back to ``apply_many`` (``read``)."""
    ids = _thread_ids(docs)
    return [
        (_THREADS_FOR_UPDATE_ANY if postgresql else _THREADS_FOR_UPDATE, {"ids": ids}),
        (_FIRST_TERMINATION, {}),
    ]


def _thread_ids(docs: Sequence[tuple[Document, datetime]]) -> list[str]:
    return sorted({doc.thread_id for doc, _ in docs})  # (sorted: replicas lock them in one order)


def _innermost(session: Session) -> object:
    return session.get_nested_transaction() or session.get_transaction()


@event.listens_for(Session, "transient_to_pending")
def _notice_added(session: Session, instance: object) -> None:
    if isinstance(instance, TerminationNotice):
        session.info.pop(_TERMINATION_READ, None)


def agreement_state(session: Session, today: date) -> str:
    return agreement_state_on(today, termination_received_on(session))


def agreement_ends_on(session: Session) -> date | None:
    received = termination_received_on(session)
    return None if received is None else received + timedelta(days=60)


def apply_many(
    session: Session,
    me: str,
    docs: Sequence[tuple[Document, datetime]],
    *,
    originals_due_days: int,
    defer: list[tuple[Any, Any]] | None = None,
    read: Sequence[Sequence[Any]] | None = None,
) -> list[Effect]:
    """Check each of ``docs`` (sent or received by Party ``me``, each with its time) against its thread and
    record its effects, in order, as if one after the other; all or none (the first one out of step raises
    ``LifecycleError``; the caller's transaction rolls back).

    The thread rows are read and written with Core, and for all the messages at
    once: one read of every thread they name (locked: replicas on PostgreSQL
    queue per thread), then one insert of the threads they open and one update
    per thread they move on. A later message sees what an earlier one did to
    its thread (a reply in the same batch as its request). With ``defer``, the
    thread writes are appended to it, for the caller to run with its other writes
    (``db.write_pipelined``), instead of run here. ``read``: the rows of ``reads_for``'s
    statements, read by the caller at the start of this transaction (else read here).
    """
    conn = session.connection()
    if read is None:
        thread_rows: Sequence[Any] = conn.execute(_THREADS_FOR_UPDATE, {"ids": _thread_ids(docs)}).all()
    else:
        thread_rows, termination_rows = read
        first_notice = termination_rows[0][0] if termination_rows else None
        session.info[_TERMINATION_READ] = (_innermost(session), first_notice)  # as termination_received_on
    threads: dict[str, dict[str, Any]] = {
        row[0]: dict(zip(_THREAD_KEYS, row, strict=True)) for row in thread_rows
    }
    opened: dict[str, dict[str, Any]] = {}  # the rows to insert, by thread id
    moved: dict[str, dict[str, Any]] = {}  # the changes to write to threads that were there, by thread id
    effects: list[Effect] = []
    for doc, now in docs:
        opens = doc.thread_id == doc.id
        thread = threads.get(doc.thread_id)
        if thread is None and not opens:
            raise LifecycleError(f"no thread {doc.thread_id} is known here", code="lifecycle.unknown_thread")
        if thread is not None and opens:
            raise LifecycleError(f"thread {doc.thread_id} already exists", code="lifecycle.thread_exists")
        requesting = (
            thread["requesting_party"]
            if thread is not None
            else (doc.sender_party if doc.kind == "request" else doc.recipient_party)
        )
        peer_of_thread = doc.recipient_party if doc.sender_party == me else doc.sender_party
        if thread is not None and {me, thread["peer"]} != {doc.sender_party, doc.recipient_party}:
            raise LifecycleError("the message's Parties are not the thread's", code="lifecycle.wrong_parties")
        role = REQUESTING if doc.sender_party == requesting else REQUESTED
        before = thread["state"] if thread is not None else None
        after = next_state(
            before,
            doc.kind,
            role,
            agreement_state(session, now.date()),
            refusal_scope=getattr(doc, "scope", None),
        )
        if thread is None:
            thread = threads[doc.id] = opened[doc.id] = {
                "id": doc.id,
                "kind": doc.kind,
                "requesting_party": requesting,
                "peer": peer_of_thread,
                "state": after,
                "urgent": bool(getattr(doc, "urgent", False)),
                "direction": getattr(doc, "direction", None),
                "form": getattr(doc, "form", None),
                "confidentiality": doc.confidentiality,
                "due_on": getattr(doc, "expected_execution_date", None),
                "purpose_code": doc.purpose_code,
                "case_number": doc.case_number,
                "opened_at": now,
                "updated_at": now,
                "last_message_id": doc.id,
            }
        else:
            changes: dict[str, Any] = {"state": after, "updated_at": now, "last_message_id": doc.id}
            new_date = getattr(doc, "new_expected_date", None)
            if doc.kind == "delay_notice" and new_date is not None:
                changes["due_on"] = new_date
            thread.update(changes)  # an opened thread's row is inserted with them
            if doc.thread_id not in opened:
                moved.setdefault(doc.thread_id, {}).update(changes)
        _KIND_EFFECTS.get(doc.kind, _nothing)(session, doc, now, originals_due_days)
        effects.append(
            Effect(doc.thread_id, before, after, role, thread["purpose_code"], thread["case_number"])
        )
    writes: list[tuple[Any, Any]] = [(_INSERT_THREAD, list(opened.values()))] if opened else []
    for statement, due in ((_MOVE_THREAD, False), (_MOVE_THREAD_AND_DUE_DATE, True)):
        rows = [
            {"t_id": thread_id, **{f"t_{k}": v for k, v in changes.items()}}
            for thread_id, changes in moved.items()
            if ("due_on" in changes) == due
        ]
        if rows:
            writes.append((statement, rows))
    write_or_defer(conn, writes, defer)
    return effects


def item_policy(doc: Document, effect: Effect) -> dict[str, Any]:
    """Art. 7 facts about a received item, kept in clear so access can be decided before decrypting:
    the provider's confidentiality level, the purpose and case it is bound to (its own if the provider set
    one, else its thread's), and which handling conditions apply. No free text."""
    own = doc.purpose_code is not None
    return {
        "confidentiality": doc.confidentiality,
        "purpose_code": doc.purpose_code if own else effect.thread_purpose_code,
        "case_number": doc.case_number if own else effect.thread_case_number,
        "no_court_use": doc.handling.no_court_use_without_consent,
        "no_onward_transfer": doc.handling.no_onward_transfer_without_consent,
        "conditions": len(doc.handling.conditions),
    }


def _nothing(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    return None


def _request(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    if getattr(doc, "urgent", False):
        session.add(
            Original(
                thread_id=doc.id,
                owed_by=doc.sender_party,
                owed_to=doc.recipient_party,
                due_on=doc.created_at.date() + timedelta(days=due_days),
                created_at=now,
                updated_at=now,
            )
        )


def _original(session: Session, doc: Document) -> Original:
    original = session.get(Original, doc.thread_id, with_for_update=True)
    if original is None:
        raise LifecycleError(
            "no original is owed for this request (it was not urgent)", code="lifecycle.no_original_owed"
        )
    return original


def _original_step(side: str, fields: tuple[str, ...], who: str) -> Any:
    """The effect of a message about the paper original: only the Party on ``side`` of it may send it,
    and it copies ``fields`` from the document onto the original's record."""

    def effect(session: Session, doc: Document, now: datetime, due_days: int) -> None:
        original = _original(session, doc)
        if doc.sender_party != getattr(original, side):
            raise LifecycleError(f"only {who}", code="lifecycle.wrong_side")
        for name in fields:
            setattr(original, name, getattr(doc, name))
        original.updated_at = now
        session.add(original)

    return effect


def _directory_update(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    version = doc.version  # type: ignore[attr-defined]
    latest = session.execute(
        select(func.max(DirectoryVersion.version)).where(DirectoryVersion.party == doc.sender_party)
    ).scalar_one_or_none()
    if latest is not None and version <= latest:
        raise LifecycleError(
            f"directory version {version} is not newer than {latest}", code="lifecycle.directory_not_newer"
        )
    body = document_to_json(doc)
    directory: dict[str, Any] = {"coordinating_unit": body["coordinating_unit"], "contacts": body["contacts"]}
    session.add(
        DirectoryVersion(
            party=doc.sender_party, version=version, message_id=doc.id, directory=directory, recorded_at=now
        )
    )


def _termination_notice(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    session.add(
        TerminationNotice(
            received_on=doc.notice_received_on,  # type: ignore[attr-defined]
            given_by=doc.sender_party,
            source="message",
            message_id=doc.id,
            recorded_at=now,
        )
    )


def _consent_request(session: Session, doc: Document, now: datetime, due_days: int) -> None:
    item_id = doc.item_id  # type: ignore[attr-defined]
    in_thread = (
        item_id == doc.thread_id
        or session.execute(
            select(func.count())
            .select_from(Message)
            .where(Message.id == item_id, Message.thread_id == doc.thread_id)
        ).scalar_one()
    )
    if not in_thread:
        raise LifecycleError("the consent request names no item of its thread", code="lifecycle.unknown_item")
    session.add(
        Consent(
            id=doc.id,
            thread_id=doc.thread_id,
            item_id=item_id,
            user_party=doc.sender_party,
            provider_party=doc.recipient_party,
            purpose_code=doc.purpose_code or "",
            case_number=doc.case_number,
            status="requested",
            requested_at=now,
        )
    )


def _consent_answer(status: str) -> Any:
    def effect(session: Session, doc: Document, now: datetime, due_days: int) -> None:
        consent = session.get(Consent, doc.consent_request_id, with_for_update=True)  # type: ignore[attr-defined]
        if consent is None:
            raise LifecycleError("no such consent request", code="lifecycle.unknown_consent")
        if doc.sender_party != consent.provider_party:
            raise LifecycleError("only the provider answers a consent request", code="lifecycle.wrong_side")
        allowed_from = ("granted",) if status == "withdrawn" else ("requested",)
        if consent.status not in allowed_from:
            raise LifecycleError(f"the consent request is {consent.status}", code="lifecycle.consent_closed")
        consent.status, consent.answer_message_id, consent.decided_at = status, doc.id, now
        if status == "granted":
            consent.valid_until = doc.valid_until  # type: ignore[attr-defined]
            consent.granted_case_number = doc.case_number
        session.add(consent)

    return effect


_KIND_EFFECTS = {
    "consent_request": _consent_request,
    "consent_granted": _consent_answer("granted"),
    "consent_refused": _consent_answer("refused"),
    "consent_withdrawn": _consent_answer("withdrawn"),
    "request": _request,
    "original_dispatched": _original_step(
        "owed_by", ("dispatched_on", "tracking_number"), "the Party that owes the original dispatches it"
    ),
    "original_received": _original_step(
        "owed_to", ("received_on", "matches_electronic"), "the Party the original is owed to confirms it"
    ),
    "directory_update": _directory_update,
    "termination_notice": _termination_notice,
}

"""Tables for the agreement's workflows: request threads, originals by post, directories, termination, drafts.

Kept apart from ``models.py`` (delivery and storage) because they change with the
agreement, not with the transport. Like there: metadata only. Free text of a
document (grounds, content, reasons...) is never stored in clear: it lives in the
envelope as received, or, for a local draft, encrypted under the node's storage key.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from service.models import UTCDateTime

THREAD_ROLES = ("requesting", "requested")
DRAFT_STATUSES = ("draft", "sent", "discarded")


def _ts(*, nullable: bool = False) -> Any:
    return Field(default=None if nullable else ..., sa_column=Column(UTCDateTime(), nullable=nullable))


class Thread(SQLModel, table=True):
    """One request (or other thread) as this node sees it; both nodes move it by the same table (Art. 4-6)."""

    __tablename__ = "thread"

    id: str = Field(sa_column=Column(String(128), primary_key=True))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    requesting_party: str = Field(sa_column=Column(String(16), nullable=False))
    peer: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    state: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    urgent: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    direction: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    form: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    confidentiality: str = Field(sa_column=Column(String(32), nullable=False))
    due_on: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    #: Art. 7: what received items of this thread are bound to (the request's purpose code and case).
    purpose_code: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    case_number: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    opened_at: datetime = _ts()
    updated_at: datetime = _ts()
    last_message_id: str = Field(sa_column=Column(String(128), nullable=False))


class Original(SQLModel, table=True):
    """Art. 4: an urgent request went electronically; its paper original is owed by post."""

    __tablename__ = "original"

    thread_id: str = Field(sa_column=Column(String(128), primary_key=True))
    owed_by: str = Field(sa_column=Column(String(16), nullable=False))
    owed_to: str = Field(sa_column=Column(String(16), nullable=False))
    due_on: date = Field(sa_column=Column(Date, nullable=False))
    dispatched_on: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    tracking_number: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    received_on: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    matches_electronic: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class DirectoryVersion(SQLModel, table=True):
    """Art. 11: one version of a Party's contact directory (ours as sent, the peer's as received)."""

    __tablename__ = "directory_version"
    __table_args__ = (UniqueConstraint("party", "version"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    party: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    message_id: str = Field(sa_column=Column(String(128), nullable=False))
    directory: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    recorded_at: datetime = _ts()


class TerminationNotice(SQLModel, table=True):
    """Art. 14: a written notice of termination, received through diplomatic channels."""

    __tablename__ = "termination_notice"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    received_on: date = Field(sa_column=Column(Date, nullable=False))
    given_by: str = Field(sa_column=Column(String(16), nullable=False))
    source: str = Field(sa_column=Column(String(16), nullable=False))  # "operator" or "peer"
    message_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    recorded_at: datetime = _ts()


class Draft(SQLModel, table=True):
    """A document a clerk prepared; it leaves the node only once a signatory signs it (Art. 4)."""

    __tablename__ = "draft"
    __table_args__ = (CheckConstraint("status IN ('draft', 'sent', 'discarded')", name="status"),)

    id: str = Field(sa_column=Column(String(128), primary_key=True))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    created_by: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    sealed: bytes = Field(
        sa_column=Column(LargeBinary, nullable=False)
    )  # fields + attachment list, encrypted
    attachment_blobs: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    message_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Consent(SQLModel, table=True):
    """Art. 7: a request for another use of a received item, and the provider's answer (same on both
    sides)."""

    __tablename__ = "consent"

    id: str = Field(sa_column=Column(String(128), primary_key=True))  # the consent_request's message id
    thread_id: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    item_id: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    user_party: str = Field(sa_column=Column(String(16), nullable=False))
    provider_party: str = Field(sa_column=Column(String(16), nullable=False))
    purpose_code: str = Field(sa_column=Column(String(64), nullable=False))
    case_number: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))  # requested|granted|refused|withdrawn
    valid_until: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    granted_case_number: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    answer_message_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    requested_at: datetime = _ts()
    decided_at: datetime | None = _ts(nullable=True)

"""Tables of the operator's admin surface: agreement configuration versions (Art. 12), per-peer admin state.

Registered on ``SQLModel.metadata`` from ``service/models.py``; created by the
migration ``0004``. Like everything the node stores: metadata, never content.

``AgreementConfigVersion`` rows are append-only: a change to the agreement's
parameters is a new version with its own start date, never an edit in place.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Date, ForeignKeyConstraint, Integer, String
from sqlmodel import Field, SQLModel

from service.models import UTCDateTime


class AgreementConfigVersion(SQLModel, table=True):
    """Art. 12: one version of the agreement's parameters, in force from ``effective_from``."""

    __tablename__ = "agreement_config_version"

    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    effective_from: date = Field(sa_column=Column(Date, nullable=False))
    #: The protocol (amendment) that made the change, e.g. "Протокол № 1 от 01.03.2026".
    reference: str = Field(sa_column=Column(String(500), nullable=False))
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    recorded_by: str = Field(sa_column=Column(String(200), nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class PeerAdmin(SQLModel, table=True):
    """What the operator and the key sync know about one peer beyond its bundle.

    ``suspended_*`` explain the peer's ``status``; ``acked_version`` is the
    version of *our* bundle the peer confirmed holding (pushes are retried
    until it matches ours).
    """

    __tablename__ = "peer_admin"
    __table_args__ = (ForeignKeyConstraint(["party"], ["peer.party"]),)

    party: str = Field(sa_column=Column(String(16), primary_key=True))
    suspended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    suspended_reason: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    acked_version: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    acked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    push_attempted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    push_error: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))

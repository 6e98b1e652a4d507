"""Art. 7: who may use a received item, for what. Small policies, combined in one place, deny by default.

Each policy looks at the item (its provider's confidentiality level, bound
purpose and handling conditions), the intended use (who, which operation, the
purpose code and case stated) and the consents on record, and either objects
with a coded reason or lets the next one decide. The outcome and every fact it
rested on go to the audit log (Directive 2016/680 Art. 25).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from protocol import CONFIDENTIALITY_LEVELS
from service.case_models import Consent
from service.errors import ServiceError

#: Closed list of purposes a reader may state (configurable by extending it; codes travel in documents).
PURPOSE_CODES: tuple[str, ...] = (
    "criminal_investigation",
    "pre_investigation_check",
    "court_proceedings",
    "crime_prevention",
    "citizen_application",
    "legal_cooperation",
    "statistics",
    "training",
    "onward_transfer",
)


def check_purpose_code(code: object, field: str = "purpose_code") -> str:
    """A purpose code from the closed list, or a 422 naming the field."""
    if not code:
        raise ServiceError(
            "state the purpose of this use (purpose_code) and its case (case_number)",
            code="policy.purpose_required",
            status=422,
            field=field,
        )
    if code not in PURPOSE_CODES:
        raise ServiceError(
            f"unknown purpose code; one of {', '.join(PURPOSE_CODES)}",
            code="policy.unknown_purpose",
            status=422,
            field=field,
        )
    return str(code)


#: Operations as Directive 2016/680 Art. 25 names them.
OPERATIONS = ("collect", "consult", "disclose", "transfer", "alter", "erase")


@dataclass(frozen=True)
class Item:
    """What the node knows about a received item without decrypting it."""

    id: str
    thread_id: str
    provider: str
    envelope_sha256: str
    confidentiality: str
    purpose_code: str | None
    case_number: str | None
    no_court_use: bool
    no_onward_transfer: bool

    @classmethod
    def from_summary(
        cls, message_id: str, thread_id: str, provider: str, envelope_sha256: str, policy: dict[str, Any]
    ) -> Item:
        return cls(
            message_id,
            thread_id,
            provider,
            envelope_sha256,
            policy.get("confidentiality", CONFIDENTIALITY_LEVELS[-1]),
            policy.get("purpose_code"),
            policy.get("case_number"),
            bool(policy.get("no_court_use")),
            bool(policy.get("no_onward_transfer")),
        )

    def audit(self) -> dict[str, Any]:
        return {
            "item_id": self.id,
            "envelope_sha256": self.envelope_sha256,
            "provider": self.provider,
            "bound_purpose": self.purpose_code,
            "bound_case": self.case_number,
            "confidentiality": self.confidentiality,
            "handling": {
                "no_court_use_without_consent": self.no_court_use,
                "no_onward_transfer_without_consent": self.no_onward_transfer,
            },
        }


@dataclass(frozen=True)
class Use:
    user_id: int
    clearance: str
    operation: str
    purpose_code: str
    case_number: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str | None
    reason: str
    consent_id: str | None = None


class Rule(Protocol):
    def object(self, item: Item, use: Use, consents: Sequence[Consent], today: date) -> Decision | None:
        """A refusal, an explicit allowance (with the consent relied on), or None: no objection."""


def level(name: str) -> int:
    return (
        CONFIDENTIALITY_LEVELS.index(name) if name in CONFIDENTIALITY_LEVELS else len(CONFIDENTIALITY_LEVELS)
    )


class ClearanceSufficient:
    def object(self, item: Item, use: Use, consents: Sequence[Consent], today: date) -> Decision | None:
        if level(use.clearance) < level(item.confidentiality):
            return Decision(
                False,
                "policy.insufficient_clearance",
                f"the item is {item.confidentiality}; your clearance is {use.clearance}",
            )
        return None


def covering_consent(item: Item, use: Use, consents: Sequence[Consent], today: date) -> Consent | None:
    for c in consents:
        if (
            c.status == "granted"
            and c.item_id in (item.id, item.thread_id)
            and c.purpose_code == use.purpose_code
            and (c.granted_case_number is None or c.granted_case_number == use.case_number)
            and (c.valid_until is None or today <= c.valid_until)
        ):
            return c
    return None


class NeedsConsent:
    """A use the provider did not agree to is allowed only under its written consent (Art. 7)."""

    def __init__(self, code: str, why: str, applies: Any) -> None:
        self.code, self.why, self.applies = code, why, applies

    def object(self, item: Item, use: Use, consents: Sequence[Consent], today: date) -> Decision | None:
        if not self.applies(item, use):
            return None
        consent = covering_consent(item, use, consents, today)
        if consent is None:
            return Decision(False, self.code, self.why)
        return Decision(True, None, f"allowed under consent {consent.id}", consent.id)


def _other_purpose(item: Item, use: Use) -> bool:
    same = item.purpose_code == use.purpose_code and item.case_number in (None, use.case_number)
    return not same


RULES: tuple[Rule, ...] = (
    ClearanceSufficient(),
    NeedsConsent(
        "policy.handling_no_court_use",
        "the provider forbade use in court without its consent",
        lambda item, use: item.no_court_use and use.purpose_code == "court_proceedings",
    ),
    NeedsConsent(
        "policy.handling_no_onward_transfer",
        "the provider forbade onward transfer without its consent",
        lambda item, use: (
            item.no_onward_transfer and (use.operation == "transfer" or use.purpose_code == "onward_transfer")
        ),
    ),
    NeedsConsent(
        "policy.purpose_not_allowed",
        "the item was given for another purpose (or case); the provider's consent is needed",
        _other_purpose,
    ),
)


def decide(item: Item, use: Use, consents: Sequence[Consent], today: date) -> Decision:
    """Every rule must agree; the first refusal wins; a consent relied on is reported."""
    relied_on: str | None = None
    for rule in RULES:
        decision = rule.object(item, use, consents, today)
        if decision is None:
            continue
        if not decision.allowed:
            return decision
        relied_on = relied_on or decision.consent_id
    return Decision(
        True, None, "allowed" if relied_on is None else f"allowed under consent {relied_on}", relied_on
    )

"""Reads, downloads and exports of received content: each one decided by ``policy`` and audited.

Nothing is decrypted before the decision. Every attempt, allowed or refused,
becomes an audit entry with the operation, who, which item (id and envelope
hash, never content), the stated and the bound purpose and case, the handling
conditions, the consent relied on and the outcome.
"""

from __future__ import annotations

from sqlalchemy import select

from protocol import PolicyError
from service import policy
from service.auth import Principal
from service.case_models import Consent
from service.db import session_scope
from service.errors import ServiceError
from service.models import Message
from service.node import Node, record_event


def check_use(purpose_code: str | None, case_number: str | None) -> tuple[str, str]:
    purpose_code = policy.check_purpose_code(purpose_code)
    if not case_number or not case_number.strip():
        raise ServiceError(
            "state the case number the item is used in",
            code="policy.case_required",
            status=422,
            field="case_number",
        )
    return purpose_code, case_number.strip()


def authorise(
    node: Node,
    message_id: str,
    user: Principal,
    operation: str,
    purpose_code: str | None,
    case_number: str | None,
) -> policy.Decision:
    """Decide one use of a received item; audit it; raise ``PolicyError`` (403) if refused."""
    code, case = check_use(purpose_code, case_number)
    now = node.clock()
    with session_scope(node.engine, readonly=True) as s:
        row = s.get(Message, (message_id, "in"))
        if row is None:
            raise ServiceError(f"no received message {message_id}", code="message.not_found", status=404)
        item = policy.Item.from_summary(
            row.id, row.thread_id or row.id, row.peer, row.envelope_sha256, row.summary.get("policy", {})
        )
        consents = list(s.execute(select(Consent).where(Consent.thread_id == item.thread_id)).scalars())
    use = policy.Use(user.id, user.clearance, operation, code, case)
    decision = policy.decide(item, use, consents, now.date())
    with session_scope(node.engine) as s:
        record_event(
            s,
            now,
            "data.use" if decision.allowed else "data.use_refused",
            "allowed" if decision.allowed else (decision.code or "refused"),
            actor=f"user:{user.id}",
            party=item.provider,
            object_id=item.id,
            operation=operation,
            stated_purpose=code,
            stated_case=case,
            consent=decision.consent_id,
            reason=decision.reason,
            **item.audit(),
        )
    if not decision.allowed:
        raise PolicyError(decision.reason, code=decision.code or "policy.denied")
    return decision


def can_see(user: Principal, confidentiality: str | None) -> bool:
    """Whether metadata beyond "it exists, from whom, when" may be shown (clearance only, no purpose)."""
    return policy.level(user.clearance) >= policy.level(confidentiality or "confidential")

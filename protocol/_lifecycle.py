"""The life of a thread under Art. 4-6 and the agreement's own state under Art. 14.

Rule 1 (after h11's ``_state.py``): everything that decides whether a message
may follow the thread's current state lives here, mostly in ``TRANSITIONS``.
Rule 2: this module does not know which Party it runs for. It knows only the
role of the *sender* within the thread, so both nodes apply the same rules to
what they send and to what they receive, and cannot cheat on either.

Roles: ``requesting`` is the Party that asks and uses (Art. 4, 7), ``requested``
the Party that executes and provides (Art. 5, 6). Threads that are not requests
(spontaneous information, consultations, directory updates, termination
notices) may be opened by either Party, so both roles carry them.

Request states::

    sent -> accepted -> (info_requested <-> info_provided) -> delayed -> executed
      \\______________________ refused | partially_refused ___/

* ``sent``: delivered and received; acceptance or refusal is due. A delay
  notice here keeps ``sent`` (acceptance is still owed).
* additional information is asked after acceptance (acceptance only says
  "taken for execution") and may be asked and given any number of times. An
  answer moves to ``info_provided`` (not back to ``accepted``) so that a node
  can see the ball is back with the requested Party; a second answer may
  follow the first. A delay notice while information is awaited keeps
  ``info_requested``, the more urgent fact.
* ``partially_refused``: part refused with ground and reason (Art. 6); the rest
  continues and may still end in ``executed`` or, refused in turn, ``refused``.
* ``executed`` and ``refused`` are terminal.

A refusal's effect depends on its scope, so the table's events are the
document kinds except ``refusal.full`` and ``refusal.partial``.

Side messages (``SIDE_MESSAGES``) never change state: consent asked, granted
or refused (Art. 7) in request, spontaneous-information and consultation
threads, including after they end (consent is typically sought once results
are in); paper originals dispatched by the requesting and received by the
requested Party (Art. 4) in request threads, whatever their state. They are
written into ``TRANSITIONS`` as self-loops, so the table alone answers "may
this follow?". Pairing a consent answer with its request is the node's job
(the document names the consent request it answers).

Art. 14: once the agreement is ``terminated``, no new request and no new
spontaneous information; everything else continues, because obligations that
arose before termination survive it.

Pure: no I/O, no clock. Dates are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Final

from ._errors import LifecycleError

REQUESTING: Final = "requesting"
REQUESTED: Final = "requested"
ROLES: Final = (REQUESTING, REQUESTED)

# Thread states. ``NEW`` stands for "no thread yet" (``None`` in ``next_state``).
NEW: Final = "new"
SENT: Final = "sent"
ACCEPTED: Final = "accepted"
INFO_REQUESTED: Final = "info_requested"
INFO_PROVIDED: Final = "info_provided"
DELAYED: Final = "delayed"
PARTIALLY_REFUSED: Final = "partially_refused"
EXECUTED: Final = "executed"
REFUSED: Final = "refused"
PROVIDED: Final = "provided"  # spontaneous information given (Art. 4 last paragraph)
CONSULTING: Final = "consulting"  # a consultation thread (Art. 10)
NOTIFIED: Final = "notified"  # a one-message notice: directory update (Art. 11), termination (Art. 14)

REQUEST_STATES: Final = (
    SENT,
    ACCEPTED,
    INFO_REQUESTED,
    INFO_PROVIDED,
    DELAYED,
    PARTIALLY_REFUSED,
    EXECUTED,
    REFUSED,
)
OPEN_REQUEST_STATES: Final = (SENT, ACCEPTED, INFO_REQUESTED, INFO_PROVIDED, DELAYED, PARTIALLY_REFUSED)
TERMINAL_STATES: Final = (EXECUTED, REFUSED)
STATES: Final = (*REQUEST_STATES, PROVIDED, CONSULTING, NOTIFIED)

# Agreement states (Art. 14).
IN_FORCE: Final = "in_force"
TERMINATION_PENDING: Final = "termination_pending"
TERMINATED: Final = "terminated"
AGREEMENT_STATES: Final = (IN_FORCE, TERMINATION_PENDING, TERMINATED)
NOTICE_PERIOD_DAYS: Final = 60

#: Kinds that start new cooperation, and so stop when the agreement has ended (Art. 14).
NEW_COOPERATION_KINDS: Final = frozenset({"request", "spontaneous_information"})

# Events: the document kind, except that a refusal's scope decides its effect.
REFUSAL_FULL: Final = "refusal.full"
REFUSAL_PARTIAL: Final = "refusal.partial"

_REFUSALS: Final = {REFUSAL_FULL: REFUSED, REFUSAL_PARTIAL: PARTIALLY_REFUSED}
_WHILE_EXECUTING: Final = {
    "additional_info_request": INFO_REQUESTED,
    "delay_notice": DELAYED,
    "execution_result": EXECUTED,
    **_REFUSALS,
}
_OPENED_BY_EITHER: Final = {
    "spontaneous_information": PROVIDED,
    "consultation": CONSULTING,
    "directory_update": NOTIFIED,
    "termination_notice": NOTIFIED,
}

_CORE: Final[dict[str, dict[str, dict[str, str]]]] = {
    REQUESTING: {
        NEW: {"request": SENT, **_OPENED_BY_EITHER},
        INFO_REQUESTED: {"additional_info": INFO_PROVIDED},
        INFO_PROVIDED: {"additional_info": INFO_PROVIDED},
        CONSULTING: {"consultation": CONSULTING},
    },
    REQUESTED: {
        NEW: dict(_OPENED_BY_EITHER),
        SENT: {"acceptance": ACCEPTED, "delay_notice": SENT, **_REFUSALS},
        ACCEPTED: dict(_WHILE_EXECUTING),
        INFO_REQUESTED: {**_WHILE_EXECUTING, "delay_notice": INFO_REQUESTED},
        INFO_PROVIDED: dict(_WHILE_EXECUTING),
        DELAYED: dict(_WHILE_EXECUTING),
        PARTIALLY_REFUSED: dict(_WHILE_EXECUTING),
        CONSULTING: {"consultation": CONSULTING},
    },
}

_CONSENT: Final = frozenset({"consent_request", "consent_granted", "consent_refused", "consent_withdrawn"})

#: {role: {state: kinds}} that may be sent in that state and leave it unchanged.
SIDE_MESSAGES: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    REQUESTING: {
        **{state: _CONSENT | {"original_dispatched"} for state in REQUEST_STATES},
        PROVIDED: _CONSENT,
        CONSULTING: _CONSENT,
    },
    REQUESTED: {
        **{state: _CONSENT | {"original_received"} for state in REQUEST_STATES},
        PROVIDED: _CONSENT,
        CONSULTING: _CONSENT,
    },
}


def _build() -> dict[str, dict[str, dict[str, str]]]:
    table: dict[str, dict[str, dict[str, str]]] = {}
    for role in ROLES:
        table[role] = {state: dict(_CORE[role].get(state, {})) for state in (NEW, *STATES)}
        for state, kinds in SIDE_MESSAGES[role].items():
            for kind in kinds:
                table[role][state].setdefault(kind, state)
    return table


#: ``{sender_role: {state: {event: new_state}}}``: the one table both Parties read.
TRANSITIONS: Final[Mapping[str, Mapping[str, Mapping[str, str]]]] = _build()


def _event(kind: str, refusal_scope: str | None) -> str:
    if kind != "refusal":
        return kind
    if refusal_scope not in ("full", "partial"):
        raise LifecycleError(
            "a refusal must say whether it is full or partial (Art. 6)",
            code="lifecycle.refusal_scope_required",
        )
    return f"refusal.{refusal_scope}"


def next_state(
    state: str | None,
    kind: str,
    sender_role: str,
    agreement_state: str,
    *,
    refusal_scope: str | None = None,
) -> str:
    """The thread's state after a message of ``kind`` sent by ``sender_role``.

    ``state`` is ``None`` when the message would open a new thread. For a
    refusal, ``refusal_scope`` (``"full"`` or ``"partial"``) decides the effect.
    Raises ``LifecycleError`` when the message may not follow.
    """
    if sender_role not in ROLES:
        raise LifecycleError(f"unknown sender role {sender_role!r}", code="lifecycle.unknown_role")
    if agreement_state not in AGREEMENT_STATES:
        raise LifecycleError(
            f"unknown agreement state {agreement_state!r}", code="lifecycle.unknown_agreement_state"
        )
    current = NEW if state is None else state
    if current not in TRANSITIONS[sender_role]:
        raise LifecycleError(f"unknown thread state {state!r}", code="lifecycle.unknown_state")
    if agreement_state == TERMINATED and kind in NEW_COOPERATION_KINDS:
        raise LifecycleError(
            f"the agreement has terminated: no new {kind} may be sent (Art. 14)",
            code="lifecycle.agreement_terminated",
        )
    new = TRANSITIONS[sender_role][current].get(_event(kind, refusal_scope))
    if new is None:
        where = "no thread yet" if state is None else f"state {state!r}"
        raise LifecycleError(
            f"a {kind} from the {sender_role} Party is not allowed in {where}",
            code="lifecycle.transition_not_allowed",
        )
    return new


def agreement_state_on(
    now_date: date,
    termination_notice_received_on: date | None,
    notice_period_days: int = NOTICE_PERIOD_DAYS,
) -> str:
    """The agreement's state on ``now_date`` (Art. 14).

    The agreement ends "on the expiry of 60 days from the day the notice was
    received": from ``received_on + 60 days`` it is ``terminated``; from the
    day of receipt until then, ``termination_pending``. Before receipt, or with
    no notice, it is ``in_force``.
    """
    if termination_notice_received_on is None or now_date < termination_notice_received_on:
        return IN_FORCE
    if now_date < termination_notice_received_on + timedelta(days=notice_period_days):
        return TERMINATION_PENDING
    return TERMINATED


def render_mermaid() -> str:
    """The request lifecycle as a Mermaid ``stateDiagram-v2``, generated from ``TRANSITIONS``.

    Side messages (self-loops) are summarised in a note rather than drawn, so
    the diagram shows the request's path.
    """
    edges: dict[tuple[str, str, str], list[str]] = {}
    for role in ROLES:
        for state, events in TRANSITIONS[role].items():
            for event, new in events.items():
                if not (new == state and event in SIDE_MESSAGES[role].get(state, frozenset())):
                    edges.setdefault((state, new, event), []).append(role)
    lines = ["stateDiagram-v2"]
    for (state, new, event), roles in edges.items():
        source = "[*]" if state == NEW else state
        who = "either Party" if len(roles) == len(ROLES) else roles[0]
        lines.append(f"    {source} --> {new} : {event} ({who})")
    for state in (*TERMINAL_STATES, PROVIDED, NOTIFIED):
        lines.append(f"    {state} --> [*]")
    lines.append("    note right of sent")
    lines.append("        In every request state: consent_request, consent_granted, consent_refused")
    lines.append("        (either Party), original_dispatched (requesting), original_received (requested)")
    lines.append("        leave the state unchanged. After termination (Art. 14) no new request")
    lines.append("        or spontaneous_information; everything else continues.")
    lines.append("    end note")
    return "\n".join(lines) + "\n"

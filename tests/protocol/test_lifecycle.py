"""The life of a request and of the agreement, article by article (protocol/_lifecycle.py)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._documents import DOCUMENT_KINDS
from protocol._errors import LifecycleError
from protocol._lifecycle import (
    ACCEPTED,
    AGREEMENT_STATES,
    CONSULTING,
    DELAYED,
    EXECUTED,
    IN_FORCE,
    INFO_PROVIDED,
    INFO_REQUESTED,
    NOTIFIED,
    OPEN_REQUEST_STATES,
    PARTIALLY_REFUSED,
    PROVIDED,
    REFUSED,
    REQUEST_STATES,
    REQUESTED,
    REQUESTING,
    ROLES,
    SENT,
    SIDE_MESSAGES,
    STATES,
    TERMINAL_STATES,
    TERMINATED,
    TERMINATION_PENDING,
    TRANSITIONS,
    agreement_state_on,
    next_state,
    render_mermaid,
)

Step = tuple[str, str] | tuple[str, str, str]  # (kind, sender role[, refusal scope])


def walk(steps: list[Step], agreement_state: str = IN_FORCE, start: str | None = None) -> str:
    state = start
    for step in steps:
        kind, role, *scope = step
        state = next_state(state, kind, role, agreement_state, refusal_scope=scope[0] if scope else None)
    assert state is not None
    return state


def refusal_of(
    state: str | None, kind: str, role: str, agreement_state: str = IN_FORCE, **kw: str
) -> LifecycleError:
    with pytest.raises(LifecycleError) as caught:
        next_state(state, kind, role, agreement_state, **kw)
    return caught.value


REQUEST: Step = ("request", REQUESTING)
ACCEPT: Step = ("acceptance", REQUESTED)
ASK: Step = ("additional_info_request", REQUESTED)
ANSWER: Step = ("additional_info", REQUESTING)
DELAY: Step = ("delay_notice", REQUESTED)
RESULT: Step = ("execution_result", REQUESTED)
REFUSE_FULL: Step = ("refusal", REQUESTED, "full")
REFUSE_PART: Step = ("refusal", REQUESTED, "partial")


# --------------------------------------------------------------------------
# Art. 4: a request opens the thread
# --------------------------------------------------------------------------


def test_art4_a_request_from_the_requesting_party_opens_a_thread_in_state_sent() -> None:
    assert next_state(None, "request", REQUESTING, IN_FORCE) == SENT


@pytest.mark.parametrize(
    "kind", ["acceptance", "additional_info", "execution_result", "delay_notice", "original_dispatched"]
)
def test_art4_only_a_request_opens_a_request_thread(kind: str) -> None:
    for role in ROLES:
        error = refusal_of(None, kind, role)
        assert error.code == "lifecycle.transition_not_allowed"


def test_art4_a_request_cannot_be_sent_into_an_existing_thread() -> None:
    for state in STATES:
        assert refusal_of(state, "request", REQUESTING).code == "lifecycle.transition_not_allowed"


def test_art4_the_requested_party_does_not_send_the_request() -> None:
    assert refusal_of(None, "request", REQUESTED).code == "lifecycle.transition_not_allowed"


def test_art4_spontaneous_information_opens_its_own_thread_from_either_party() -> None:
    for role in ROLES:
        assert next_state(None, "spontaneous_information", role, IN_FORCE) == PROVIDED
    assert refusal_of(SENT, "spontaneous_information", REQUESTED).code == "lifecycle.transition_not_allowed"


@pytest.mark.parametrize("state", REQUEST_STATES)
def test_art4_originals_are_recorded_in_any_request_state_without_changing_it(state: str) -> None:
    assert next_state(state, "original_dispatched", REQUESTING, IN_FORCE) == state
    assert next_state(state, "original_received", REQUESTED, IN_FORCE) == state


def test_art4_the_original_is_dispatched_by_the_requesting_party_and_received_by_the_requested() -> None:
    assert refusal_of(SENT, "original_dispatched", REQUESTED).code == "lifecycle.transition_not_allowed"
    assert refusal_of(SENT, "original_received", REQUESTING).code == "lifecycle.transition_not_allowed"


def test_art4_originals_belong_to_request_threads_only() -> None:
    for state in (PROVIDED, CONSULTING, NOTIFIED):
        assert refusal_of(state, "original_dispatched", REQUESTING).code == "lifecycle.transition_not_allowed"


# --------------------------------------------------------------------------
# Art. 5: execution
# --------------------------------------------------------------------------


def test_art5_the_full_path_received_accepted_info_delay_executed() -> None:
    assert walk([REQUEST]) == SENT
    assert walk([REQUEST, ACCEPT]) == ACCEPTED
    assert walk([REQUEST, ACCEPT, ASK]) == INFO_REQUESTED
    assert walk([REQUEST, ACCEPT, ASK, ANSWER]) == INFO_PROVIDED
    assert walk([REQUEST, ACCEPT, ASK, ANSWER, DELAY]) == DELAYED
    assert walk([REQUEST, ACCEPT, ASK, ANSWER, DELAY, RESULT]) == EXECUTED


def test_art5_a_request_can_be_executed_straight_after_acceptance() -> None:
    assert walk([REQUEST, ACCEPT, RESULT]) == EXECUTED


def test_art5_additional_information_can_be_asked_repeatedly() -> None:
    assert walk([REQUEST, ACCEPT, ASK, ANSWER, ASK, ANSWER, ASK, ANSWER, RESULT]) == EXECUTED
    assert walk([REQUEST, ACCEPT, ASK, ASK, ANSWER, ANSWER]) == INFO_PROVIDED


def test_art5_additional_information_is_given_only_when_asked() -> None:
    for state in (SENT, ACCEPTED, DELAYED, PARTIALLY_REFUSED):
        assert refusal_of(state, "additional_info", REQUESTING).code == "lifecycle.transition_not_allowed"


def test_art5_additional_information_is_asked_after_acceptance() -> None:
    assert refusal_of(SENT, "additional_info_request", REQUESTED).code == "lifecycle.transition_not_allowed"


def test_art5_only_the_requested_party_accepts_executes_asks_or_delays() -> None:
    for kind in ("acceptance", "execution_result", "additional_info_request", "delay_notice"):
        for state in OPEN_REQUEST_STATES:
            assert refusal_of(state, kind, REQUESTING).code == "lifecycle.transition_not_allowed"


def test_art5_the_result_requires_acceptance_first() -> None:
    assert refusal_of(SENT, "execution_result", REQUESTED).code == "lifecycle.transition_not_allowed"


def test_art5_a_request_is_accepted_once() -> None:
    for state in (ACCEPTED, INFO_PROVIDED, DELAYED, EXECUTED):
        assert refusal_of(state, "acceptance", REQUESTED).code == "lifecycle.transition_not_allowed"


@pytest.mark.parametrize("state", OPEN_REQUEST_STATES)
def test_art5_a_delay_can_be_notified_in_every_open_state(state: str) -> None:
    assert next_state(state, "delay_notice", REQUESTED, IN_FORCE) in OPEN_REQUEST_STATES


def test_art5_a_delay_before_acceptance_or_while_awaiting_information_keeps_the_more_urgent_state() -> None:
    assert walk([REQUEST, DELAY]) == SENT
    assert walk([REQUEST, ACCEPT, ASK, DELAY]) == INFO_REQUESTED
    assert walk([REQUEST, ACCEPT, DELAY, DELAY]) == DELAYED


@pytest.mark.parametrize("state", TERMINAL_STATES)
def test_art5_nothing_changes_a_request_once_executed_or_refused(state: str) -> None:
    for role in ROLES:
        assert all(new == state for new in TRANSITIONS[role][state].values())
    for kind in ("delay_notice", "execution_result", "additional_info_request", "acceptance"):
        assert refusal_of(state, kind, REQUESTED).code == "lifecycle.transition_not_allowed"
    assert (
        refusal_of(state, "refusal", REQUESTED, refusal_scope="full").code
        == "lifecycle.transition_not_allowed"
    )


def test_art5_the_execution_result_is_terminal() -> None:
    assert EXECUTED in TERMINAL_STATES
    assert refusal_of(walk([REQUEST, ACCEPT, RESULT]), "execution_result", REQUESTED).code == (
        "lifecycle.transition_not_allowed"
    )


# --------------------------------------------------------------------------
# Art. 6: refusal
# --------------------------------------------------------------------------


@pytest.mark.parametrize("state", OPEN_REQUEST_STATES)
def test_art6_a_request_can_be_refused_in_full_from_any_open_state(state: str) -> None:
    assert next_state(state, "refusal", REQUESTED, IN_FORCE, refusal_scope="full") == REFUSED


def test_art6_full_refusal_is_terminal() -> None:
    state = walk([REQUEST, REFUSE_FULL])
    assert state == REFUSED and state in TERMINAL_STATES
    assert refusal_of(state, "acceptance", REQUESTED).code == "lifecycle.transition_not_allowed"


def test_art6_partial_refusal_can_be_followed_by_the_result_for_the_rest() -> None:
    assert walk([REQUEST, REFUSE_PART, RESULT]) == EXECUTED
    assert walk([REQUEST, ACCEPT, REFUSE_PART, ASK, ANSWER, DELAY, RESULT]) == EXECUTED


def test_art6_after_a_partial_refusal_the_rest_may_be_refused_too() -> None:
    assert walk([REQUEST, ACCEPT, REFUSE_PART, REFUSE_PART]) == PARTIALLY_REFUSED
    assert walk([REQUEST, ACCEPT, REFUSE_PART, REFUSE_FULL]) == REFUSED


def test_art6_a_refusal_must_say_full_or_partial() -> None:
    for scope in (None, "mostly"):
        error = refusal_of(ACCEPTED, "refusal", REQUESTED, **({"refusal_scope": scope} if scope else {}))
        assert error.code == "lifecycle.refusal_scope_required"


def test_art6_only_the_requested_party_refuses() -> None:
    error = refusal_of(ACCEPTED, "refusal", REQUESTING, refusal_scope="full")
    assert error.code == "lifecycle.transition_not_allowed"


# --------------------------------------------------------------------------
# Art. 7, 10, 11: side messages and other threads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("state", (*REQUEST_STATES, PROVIDED, CONSULTING))
@pytest.mark.parametrize("kind", ["consent_request", "consent_granted", "consent_refused"])
def test_art7_consent_is_asked_and_given_by_either_party_without_changing_state(
    state: str, kind: str
) -> None:
    for role in ROLES:
        assert next_state(state, kind, role, IN_FORCE) == state


def test_art7_consent_needs_a_thread_holding_the_item() -> None:
    assert refusal_of(None, "consent_request", REQUESTING).code == "lifecycle.transition_not_allowed"
    assert refusal_of(NOTIFIED, "consent_request", REQUESTING).code == "lifecycle.transition_not_allowed"


def test_art10_consultations_open_a_thread_and_continue_in_it_from_either_party() -> None:
    state = next_state(None, "consultation", REQUESTED, IN_FORCE)
    assert state == CONSULTING
    for role in ROLES:
        assert next_state(state, "consultation", role, IN_FORCE) == CONSULTING


def test_art11_directory_updates_are_one_message_notices() -> None:
    state = next_state(None, "directory_update", REQUESTING, IN_FORCE)
    assert state == NOTIFIED
    assert refusal_of(state, "directory_update", REQUESTING).code == "lifecycle.transition_not_allowed"


# --------------------------------------------------------------------------
# Art. 14: termination
# --------------------------------------------------------------------------


def test_art14_no_new_request_after_termination() -> None:
    error = refusal_of(None, "request", REQUESTING, TERMINATED)
    assert error.code == "lifecycle.agreement_terminated"
    assert "Art. 14" in error.message


def test_art14_no_new_spontaneous_information_after_termination() -> None:
    for role in ROLES:
        assert (
            refusal_of(None, "spontaneous_information", role, TERMINATED).code
            == "lifecycle.agreement_terminated"
        )


def test_art14_requests_are_still_sent_while_the_notice_period_runs() -> None:
    assert next_state(None, "request", REQUESTING, TERMINATION_PENDING) == SENT
    assert next_state(None, "spontaneous_information", REQUESTED, TERMINATION_PENDING) == PROVIDED


def test_art14_results_of_pending_requests_still_flow_after_termination() -> None:
    before = walk([REQUEST, ACCEPT, ASK])
    after = walk([ANSWER, DELAY, REFUSE_PART, RESULT], agreement_state=TERMINATED, start=before)
    assert after == EXECUTED
    assert walk([REFUSE_FULL], agreement_state=TERMINATED, start=SENT) == REFUSED


def test_art14_originals_and_consents_continue_after_termination() -> None:
    for state in (SENT, EXECUTED, REFUSED):
        assert next_state(state, "original_dispatched", REQUESTING, TERMINATED) == state
        assert next_state(state, "original_received", REQUESTED, TERMINATED) == state
        assert next_state(state, "consent_request", REQUESTING, TERMINATED) == state
        assert next_state(state, "consent_granted", REQUESTED, TERMINATED) == state
    assert next_state(PROVIDED, "consent_refused", REQUESTED, TERMINATED) == PROVIDED


def test_art14_consultations_to_settle_what_remains_continue_after_termination() -> None:
    assert next_state(None, "consultation", REQUESTING, TERMINATED) == CONSULTING


def test_art14_the_agreement_is_in_force_without_a_termination_notice() -> None:
    assert agreement_state_on(date(2030, 1, 1), None) == IN_FORCE


def test_art14_the_agreement_ends_on_the_expiry_of_60_days_from_receipt_of_the_notice() -> None:
    received = date(2024, 5, 1)
    assert agreement_state_on(received - timedelta(days=1), received) == IN_FORCE
    assert agreement_state_on(received, received) == TERMINATION_PENDING
    assert agreement_state_on(received + timedelta(days=59), received) == TERMINATION_PENDING
    assert agreement_state_on(received + timedelta(days=60), received) == TERMINATED
    assert agreement_state_on(date(2024, 6, 30), received) == TERMINATED
    assert agreement_state_on(date(2030, 1, 1), received) == TERMINATED


def test_art12_the_notice_period_is_a_parameter() -> None:
    received = date(2024, 5, 1)
    assert (
        agreement_state_on(received + timedelta(days=60), received, notice_period_days=90)
        == TERMINATION_PENDING
    )
    assert agreement_state_on(received + timedelta(days=90), received, notice_period_days=90) == TERMINATED


# --------------------------------------------------------------------------
# The table itself (STYLE.md section 3)
# --------------------------------------------------------------------------


def test_each_kind_is_sent_by_the_party_the_agreement_names() -> None:
    sent_by = {
        role: {kind.split(".")[0] for states in TRANSITIONS[role].values() for kind in states}
        for role in ROLES
    }
    assert sent_by[REQUESTING] - sent_by[REQUESTED] == {"request", "additional_info", "original_dispatched"}
    assert sent_by[REQUESTED] - sent_by[REQUESTING] == {
        "acceptance",
        "additional_info_request",
        "delay_notice",
        "execution_result",
        "refusal",
        "original_received",
    }


def test_every_document_kind_is_known_to_the_lifecycle() -> None:
    events = {
        event.split(".")[0] for role in ROLES for states in TRANSITIONS[role].values() for event in states
    }
    assert events == set(DOCUMENT_KINDS)


def test_every_target_is_a_known_state_and_every_state_is_reachable() -> None:
    targets = {new for role in ROLES for states in TRANSITIONS[role].values() for new in states.values()}
    assert targets == set(STATES)


def test_side_messages_never_change_state() -> None:
    for role in ROLES:
        for state, kinds in SIDE_MESSAGES[role].items():
            for kind in kinds:
                assert TRANSITIONS[role][state][kind] == state


def test_a_refused_transition_names_the_state_kind_and_role() -> None:
    error = refusal_of(EXECUTED, "delay_notice", REQUESTED)
    assert error.code == "lifecycle.transition_not_allowed"
    assert "executed" in error.message and "delay_notice" in error.message and "requested" in error.message


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((SENT, "acceptance", "court", IN_FORCE), "lifecycle.unknown_role"),
        ((SENT, "acceptance", REQUESTED, "suspended"), "lifecycle.unknown_agreement_state"),
        (("lost", "acceptance", REQUESTED, IN_FORCE), "lifecycle.unknown_state"),
        ((SENT, "telegram", REQUESTED, IN_FORCE), "lifecycle.transition_not_allowed"),
    ],
)
def test_unknown_roles_states_and_kinds_are_lifecycle_errors(
    args: tuple[str, str, str, str], code: str
) -> None:
    with pytest.raises(LifecycleError) as caught:
        next_state(*args)
    assert caught.value.code == code


def test_the_mermaid_diagram_is_generated_from_the_table() -> None:
    diagram = render_mermaid()
    assert diagram.startswith("stateDiagram-v2\n")
    assert "[*] --> sent : request (requesting)" in diagram
    assert "accepted --> info_requested : additional_info_request (requested)" in diagram
    assert "partially_refused --> executed : execution_result (requested)" in diagram
    assert "[*] --> consulting : consultation (either Party)" in diagram
    for state in TERMINAL_STATES:
        assert f"{state} --> [*]" in diagram
    assert "consent_granted" not in diagram.split("note")[0]  # side messages are a note, not edges


steps = st.tuples(
    st.sampled_from(sorted(set(DOCUMENT_KINDS) | {"telegram"})),
    st.sampled_from(ROLES),
    st.sampled_from(["full", "partial"]),
)


@settings(max_examples=500)
@given(st.lists(steps, max_size=12), st.sampled_from(AGREEMENT_STATES))
def test_property_any_sequence_either_advances_to_a_known_state_or_raises_lifecycle_error(
    sequence: list[tuple[str, str, str]], agreement_state: str
) -> None:
    state: str | None = None
    for kind, role, scope in sequence:
        try:
            new = next_state(state, kind, role, agreement_state, refusal_scope=scope)
        except LifecycleError as error:
            assert error.code in {"lifecycle.transition_not_allowed", "lifecycle.agreement_terminated"}
            continue
        assert new in STATES
        if state in TERMINAL_STATES:
            assert new == state  # only side messages after the end
        if state is None:
            assert kind in {
                "request",
                "spontaneous_information",
                "consultation",
                "directory_update",
                "termination_notice",
            }
        state = new

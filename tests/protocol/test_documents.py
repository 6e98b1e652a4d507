"""The documents of the agreement, article by article (protocol/_documents.py)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol._documents import (
    CONFIDENTIALITY_LEVELS,
    DIRECTIONS,
    DOCUMENT_KINDS,
    DOCUMENT_TYPES,
    FORMS,
    REFUSAL_GROUNDS,
    Acceptance,
    BaseDocument,
    DelayNotice,
    ExecutionResult,
    OriginalReceived,
    Refusal,
    Request,
    SpontaneousInformation,
    TerminationNotice,
    Vocabulary,
    document_to_json,
    is_russian,
    parse_document,
)
from protocol._errors import DocumentError

REQUEST_ID = "0b7f3f8e-4a4b-4c39-9a55-2f0d6c1e0a01"
MESSAGE_ID = "6c2f0e4d-2b9a-4d7e-8f31-5a6b7c8d9e02"
OTHER_ID = "9d8e7f6a-5b4c-4d3e-a2f1-0e9d8c7b6a03"
CREATED_AT = "2024-05-02T06:30:00Z"
D = TypeVar("D", bound=BaseDocument)

CODES = {
    "document.malformed",
    "document.unknown_kind",
    "document.missing_field",
    "document.unknown_field",
    "document.invalid_value",
    "document.not_russian",
    "document.party_mismatch",
    "document.thread_mismatch",
    "document.duplicate_attachment",
}

CONTACT = {
    "name": "Ахметов Ерлан Серикович",
    "position": "прокурор управления международного сотрудничества",
    "phone": "+7 7172 71-25-00",
    "email": "e.akhmetov@prokuror.kz",
}

# Per kind: its own fields, and how it sits in a thread.
OWN_FIELDS: dict[str, dict[str, Any]] = {
    "request": {
        "requesting_party": "KZ",
        "requested_party": "BY",
        "grounds": "Уголовное дело № 2024-0117, возбуждённое по ч. 3 ст. 297 УК РК",
        "purpose": "Установление местонахождения подозреваемого",
        "content": "Прошу сообщить сведения о пересечении границы гражданином Петровым П.П.",
        "expected_execution_date": "2024-06-30",
        "other_information": "",
        "direction": "drugs",
        "form": "crime_information",
        "urgent": True,
    },
    "acceptance": {"note": "Запрос принят к исполнению"},
    "additional_info_request": {"questions": "Просим уточнить дату рождения Петрова П.П."},
    "additional_info": {"content": "Петров П.П. родился 12.03.1985 в г. Караганде"},
    "delay_notice": {"reason": "Требуется получение сведений из архива", "new_expected_date": "2024-07-15"},
    "execution_result": {"summary": "Петров П.П. пересекал границу 14.02.2024 в пункте пропуска Брест"},
    "refusal": {
        "scope": "partial",
        "ground": "national_law",
        "reason": "Сведения о банковских счетах составляют тайну",
    },
    "spontaneous_information": {
        "content": "Получены сведения о канале поставки наркотических средств",
        "purpose": "Предупреждение преступлений",
        "direction": "drugs",
        "form": "crime_information",
    },
    "consent_request": {
        "item_id": OTHER_ID,
        "requested_purpose": "Использование в качестве доказательства по уголовному делу",
        "purpose_code": "court_evidence",
        "case_number": "2024-0117",
        "justification": "Сведения необходимы для предъявления обвинения",
    },
    "consent_granted": {
        "consent_request_id": OTHER_ID,
        "valid_until": "2025-05-01",
        "case_number": "2024-0117",
    },
    "consent_refused": {"consent_request_id": OTHER_ID, "reason": "Сведения получены в оперативном порядке"},
    "consent_withdrawn": {"consent_request_id": OTHER_ID, "reason": "Обстоятельства изменились"},
    "original_dispatched": {
        "request_id": REQUEST_ID,
        "dispatched_on": "2024-05-03",
        "tracking_number": "RR123456789KZ",
    },
    "original_received": {
        "request_id": REQUEST_ID,
        "received_on": "2024-05-20",
        "matches_electronic": True,
        "note": "",
    },
    "directory_update": {
        "coordinating_unit": {
            "name": "Департамент международного сотрудничества",
            "address": "г. Астана, ул. Орынбор, 14",
        },
        "contacts": [CONTACT],
        "version": 1,
    },
    "consultation": {"subject": "Толкование статьи 7 Соглашения", "text": "Предлагаем провести консультации"},
    "termination_notice": {"notice_received_on": "2024-05-01", "text": "Получено уведомление о прекращении"},
}

OPENERS = {"request", "spontaneous_information", "directory_update", "consultation", "termination_notice"}
IN_THREAD = {"consent_request", "original_dispatched", "original_received"}


def valid(kind: str, **changes: Any) -> dict[str, Any]:
    """A valid JSON document of ``kind`` sent by KZ to BY, with ``changes`` applied."""
    own_id = REQUEST_ID if kind in OPENERS else MESSAGE_ID
    obj: dict[str, Any] = {
        "kind": kind,
        "id": own_id,
        "thread_id": REQUEST_ID,
        "in_reply_to": None if kind in OPENERS | IN_THREAD else REQUEST_ID,
        "sender_party": "KZ",
        "recipient_party": "BY",
        "created_at": CREATED_AT,
        "language": "ru",
        "confidentiality": "official_use",
        **OWN_FIELDS[kind],
    }
    if kind in {"consent_granted", "consent_refused", "consent_withdrawn"}:
        obj["in_reply_to"] = OTHER_ID
    obj.update(changes)
    return obj


def without(obj: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != field}


def parsed(cls: type[D], obj: Any, **kwargs: Any) -> D:
    """Parse and check the kind's class, so tests can use its own fields."""
    doc = parse_document(obj, **kwargs)
    assert isinstance(doc, cls)
    return doc


def rejection(obj: Any, **kwargs: Any) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        parse_document(obj, **kwargs)
    return caught.value


# --------------------------------------------------------------------------
# Every kind
# --------------------------------------------------------------------------


def test_the_kinds_the_agreement_needs_are_all_defined() -> None:
    # The sixteen of the agreement, and consent withdrawal (Art. 7: consent for future use can end).
    assert set(DOCUMENT_KINDS) == set(OWN_FIELDS)
    assert len(DOCUMENT_KINDS) == 17


@pytest.mark.parametrize("kind", DOCUMENT_KINDS)
def test_a_valid_document_of_every_kind_parses_and_round_trips(kind: str) -> None:
    doc = parse_document(valid(kind))
    assert doc.kind == kind
    assert isinstance(doc, DOCUMENT_TYPES[kind])
    as_json = document_to_json(doc)
    assert json.loads(json.dumps(as_json)) == as_json
    assert parse_document(as_json) == doc


def test_unknown_kind_is_rejected() -> None:
    error = rejection({**valid("request"), "kind": "extradition"})
    assert (error.code, error.field) == ("document.unknown_kind", "kind")


def test_missing_kind_is_reported_as_missing_field() -> None:
    error = rejection(without(valid("request"), "kind"))
    assert (error.code, error.field) == ("document.missing_field", "kind")


@pytest.mark.parametrize("garbage", [None, [], "request", 3, b"{}"])
def test_a_document_must_be_a_json_object(garbage: Any) -> None:
    assert rejection(garbage).code == "document.malformed"


def test_unknown_fields_are_rejected_not_ignored() -> None:
    error = rejection(valid("acceptance", signed_by="Иванов"))
    assert (error.code, error.field) == ("document.unknown_field", "signed_by")


def test_documents_are_immutable() -> None:
    doc = parsed(Request, valid("request"))
    with pytest.raises(ValidationError):
        doc.content = "Другой текст"
    assert doc.content == OWN_FIELDS["request"]["content"]


def test_dates_travel_as_iso_text_and_times_in_utc() -> None:
    as_json = document_to_json(parse_document(valid("request", created_at="2024-05-02T11:30:00+05:00")))
    assert as_json["created_at"] == "2024-05-02T06:30:00Z"
    assert as_json["expected_execution_date"] == "2024-06-30"


def test_created_at_without_time_zone_is_rejected() -> None:
    error = rejection(valid("acceptance", created_at="2024-05-02T06:30:00"))
    assert (error.code, error.field) == ("document.invalid_value", "created_at")
    naive = datetime(2024, 5, 2, 6, 30)
    with pytest.raises(DocumentError) as caught:
        parse_document(valid("acceptance", created_at=naive))
    assert caught.value.field == "created_at"


def test_created_at_with_an_offset_is_normalised_to_utc() -> None:
    doc = parse_document(valid("acceptance", created_at="2024-05-02T09:30:00+03:00"))
    assert doc.created_at == datetime(2024, 5, 2, 6, 30, tzinfo=UTC)
    assert doc.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["2024-02-30", "02.05.2024", "2024-05-02T00:00:00Z", 20240502, True])
def test_dates_must_be_real_iso_dates(value: Any) -> None:
    error = rejection(valid("request", expected_execution_date=value))
    assert (error.code, error.field) == ("document.invalid_value", "expected_execution_date")


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-05:00",
        "2024-05-02T06:30:00+24:00",
        "2024-05-02",
        1714631400,
    ],
)
def test_created_at_out_of_range_or_malformed_is_rejected(value: Any) -> None:
    error = rejection(valid("acceptance", created_at=value))
    assert (error.code, error.field) == ("document.invalid_value", "created_at")


@pytest.mark.parametrize(
    "text", ["Сведения \ud800 о лице", "Сведения\x00 о лице", "Сведения \x1b[31m о лице"]
)
def test_free_text_cannot_hide_surrogates_or_control_characters(text: str) -> None:
    error = rejection(valid("execution_result", summary=text))
    assert (error.code, error.field) == ("document.invalid_value", "summary")


def test_free_text_keeps_line_breaks_and_tabs() -> None:
    text = "Результаты:\n\t1. Установлено местонахождение.\r\n\t2. Изъяты документы."
    assert parsed(ExecutionResult, valid("execution_result", summary=text)).summary == text


def test_sender_and_recipient_must_be_different_parties() -> None:
    error = rejection(valid("acceptance", recipient_party="KZ"))
    assert (error.code, error.field) == ("document.party_mismatch", "recipient_party")


@pytest.mark.parametrize("code", ["kz", "K", "KAZA", "К Z", "КZ"])
def test_party_codes_are_two_or_three_latin_capitals(code: str) -> None:
    error = rejection(valid("acceptance", sender_party=code))
    assert (error.code, error.field) == ("document.invalid_value", "sender_party")


@pytest.mark.parametrize(
    "value", ["not-a-uuid", REQUEST_ID.upper(), "{" + REQUEST_ID + "}", REQUEST_ID.replace("-", "")]
)
def test_ids_are_canonical_uuid_text(value: str) -> None:
    error = rejection(valid("acceptance", id=value))
    assert (error.code, error.field) == ("document.invalid_value", "id")


def test_scalar_types_are_not_coerced() -> None:
    assert rejection(valid("request", urgent="true")).field == "urgent"
    assert rejection(valid("directory_update", version="1")).field == "version"
    assert rejection(valid("directory_update", version=1.0)).field == "version"


def test_errors_never_quote_the_rejected_content() -> None:
    secret = "Совершенно секретные сведения о John Smith, John Smith, John Smith, John Smith"
    error = rejection(valid("request", content=secret, direction="unknown-direction"))
    assert secret not in str(error)
    assert "unknown-direction" not in str(error)


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OPENERS - {"consultation"}))
def test_requests_and_notices_open_their_own_thread(kind: str) -> None:
    error = rejection(valid(kind, thread_id=OTHER_ID))
    assert (error.code, error.field) == ("document.thread_mismatch", "thread_id")
    error = rejection(valid(kind, in_reply_to=OTHER_ID))
    assert (error.code, error.field) == ("document.thread_mismatch", "in_reply_to")


def test_a_consultation_opens_a_thread_or_answers_within_one() -> None:
    opening = parse_document(valid("consultation"))
    answer = parse_document(valid("consultation", id=MESSAGE_ID, in_reply_to=REQUEST_ID))
    assert opening.thread_id == opening.id
    assert answer.thread_id == opening.id and answer.in_reply_to == opening.id
    assert rejection(valid("consultation", id=MESSAGE_ID)).code == "document.thread_mismatch"


@pytest.mark.parametrize(
    "kind",
    [
        "acceptance",
        "additional_info_request",
        "additional_info",
        "delay_notice",
        "execution_result",
        "refusal",
    ],
)
def test_art5_replies_name_the_message_they_answer(kind: str) -> None:
    error = rejection(valid(kind, in_reply_to=None))
    assert (error.code, error.field) == ("document.missing_field", "in_reply_to")
    assert rejection(valid(kind, thread_id=MESSAGE_ID)).code == "document.thread_mismatch"


def test_a_message_cannot_answer_itself() -> None:
    error = rejection(valid("acceptance", in_reply_to=MESSAGE_ID))
    assert (error.code, error.field) == ("document.thread_mismatch", "in_reply_to")


@pytest.mark.parametrize("kind", ["original_dispatched", "original_received"])
def test_art4_originals_belong_to_the_request_of_their_thread(kind: str) -> None:
    error = rejection(valid(kind, request_id=OTHER_ID))
    assert (error.code, error.field) == ("document.thread_mismatch", "request_id")


@pytest.mark.parametrize("kind", ["consent_granted", "consent_refused", "consent_withdrawn"])
def test_art7_consent_answers_the_consent_request_it_names(kind: str) -> None:
    error = rejection(valid(kind, consent_request_id=MESSAGE_ID.replace("6c2f", "1111")))
    assert (error.code, error.field) == ("document.thread_mismatch", "consent_request_id")


# --------------------------------------------------------------------------
# Art. 2, 3: directions and forms
# --------------------------------------------------------------------------


def test_art2_every_direction_of_the_agreement_is_accepted() -> None:
    for direction in DIRECTIONS:
        assert parsed(Request, valid("request", direction=direction)).direction == direction


def test_art2_direction_outside_the_closed_list_is_rejected() -> None:
    error = rejection(valid("request", direction="tax_advice"))
    assert (error.code, error.field) == ("document.invalid_value", "direction")


def test_art2_directions_and_forms_can_be_extended_by_configuration() -> None:
    vocabulary = Vocabulary(directions=(*DIRECTIONS, "cybersecurity"), forms=(*FORMS, "joint_inspection"))
    doc = parsed(
        Request, valid("request", direction="cybersecurity", form="joint_inspection"), vocabulary=vocabulary
    )
    assert (doc.direction, doc.form) == ("cybersecurity", "joint_inspection")
    assert rejection(valid("request", direction="cybersecurity")).field == "direction"


def test_art3_form_outside_the_closed_list_is_rejected() -> None:
    error = rejection(valid("spontaneous_information", form="gossip"))
    assert (error.code, error.field) == ("document.invalid_value", "form")


def test_art3_every_form_of_the_agreement_is_accepted() -> None:
    for form in FORMS:
        assert parsed(SpontaneousInformation, valid("spontaneous_information", form=form)).form == form


# --------------------------------------------------------------------------
# Art. 4: requests
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "requesting_party",
        "requested_party",
        "grounds",
        "purpose",
        "content",
        "expected_execution_date",
        "other_information",
    ],
)
def test_art4_request_without_items_a_to_e_is_invalid(field: str) -> None:
    error = rejection(without(valid("request"), field))
    assert (error.code, error.field) == ("document.missing_field", field)


def test_art4_request_without_expected_execution_date_is_invalid() -> None:
    for obj in (
        without(valid("request"), "expected_execution_date"),
        valid("request", expected_execution_date=None),
    ):
        error = rejection(obj)
        assert (error.code, error.field) == ("document.missing_field", "expected_execution_date")


@pytest.mark.parametrize("field", ["grounds", "purpose", "content"])
@pytest.mark.parametrize("blank", ["", "   \n\t"])
def test_art4_blank_grounds_purpose_or_content_count_as_missing(field: str, blank: str) -> None:
    error = rejection(valid("request", **{field: blank}))
    assert (error.code, error.field) == ("document.missing_field", field)


def test_art4_other_information_may_be_empty_but_must_be_present() -> None:
    assert parsed(Request, valid("request", other_information="")).other_information == ""
    assert rejection(without(valid("request"), "other_information")).code == "document.missing_field"


def test_art4_requesting_party_is_the_sender_and_requested_party_the_recipient() -> None:
    error = rejection(valid("request", requesting_party="BY"))
    assert (error.code, error.field) == ("document.party_mismatch", "requesting_party")
    error = rejection(valid("request", requested_party="RU"))
    assert (error.code, error.field) == ("document.party_mismatch", "requested_party")


def test_art4_expected_execution_date_cannot_precede_the_request() -> None:
    error = rejection(valid("request", expected_execution_date="2024-05-01"))
    assert (error.code, error.field) == ("document.invalid_value", "expected_execution_date")
    on_the_day = parsed(Request, valid("request", expected_execution_date="2024-05-02"))
    assert on_the_day.expected_execution_date == date(2024, 5, 2)


def test_art4_a_request_carries_one_direction_and_one_form() -> None:
    for field in ("direction", "form"):
        error = rejection(without(valid("request"), field))
        assert (error.code, error.field) == ("document.missing_field", field)


def test_art4_urgency_defaults_to_not_urgent() -> None:
    doc = parsed(Request, without(valid("request"), "urgent"))
    assert doc.urgent is False


def test_art4_spontaneous_information_needs_no_request_but_a_purpose_set_by_its_provider() -> None:
    doc = parse_document(valid("spontaneous_information"))
    assert doc.thread_id == doc.id and doc.in_reply_to is None
    error = rejection(without(valid("spontaneous_information"), "purpose"))
    assert (error.code, error.field) == ("document.missing_field", "purpose")


def test_art4_attachment_names_are_unique_within_a_document() -> None:
    attachment = {"name": "протокол.pdf", "media_type": "application/pdf", "size": 1024, "sha256": "ab" * 32}
    doc = parse_document(valid("request", attachments=[attachment]))
    assert doc.attachments[0].name == "протокол.pdf"
    error = rejection(valid("request", attachments=[attachment, dict(attachment, size=1)]))
    assert (error.code, error.field) == ("document.duplicate_attachment", "attachments")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "AB" * 32),
        ("sha256", "ab" * 31),
        ("size", -1),
        ("name", "../etc/passwd"),
        ("name", "a\\b.pdf"),
        ("name", ""),
        ("media_type", "pdf"),
    ],
)
def test_art4_attachment_references_are_well_formed(field: str, value: Any) -> None:
    attachment = {"name": "протокол.pdf", "media_type": "application/pdf", "size": 1024, "sha256": "ab" * 32}
    error = rejection(valid("request", attachments=[{**attachment, field: value}]))
    assert (error.code, error.field) == ("document.invalid_value", f"attachments.0.{field}")


# --------------------------------------------------------------------------
# Art. 5: replies
# --------------------------------------------------------------------------


def test_art5_delay_notice_needs_a_reason_and_may_give_a_new_date() -> None:
    error = rejection(without(valid("delay_notice"), "reason"))
    assert (error.code, error.field) == ("document.missing_field", "reason")
    assert parsed(DelayNotice, without(valid("delay_notice"), "new_expected_date")).new_expected_date is None


def test_art5_additional_information_request_needs_questions() -> None:
    error = rejection(valid("additional_info_request", questions=""))
    assert (error.code, error.field) == ("document.missing_field", "questions")


def test_art5_execution_result_needs_a_summary() -> None:
    error = rejection(without(valid("execution_result"), "summary"))
    assert (error.code, error.field) == ("document.missing_field", "summary")


def test_art5_acceptance_note_is_optional() -> None:
    assert parsed(Acceptance, without(valid("acceptance"), "note")).note is None


# --------------------------------------------------------------------------
# Art. 6: refusals
# --------------------------------------------------------------------------


def test_art6_refusal_without_reason_is_rejected() -> None:
    for obj in (without(valid("refusal"), "reason"), valid("refusal", reason=" ")):
        error = rejection(obj)
        assert (error.code, error.field) == ("document.missing_field", "reason")


def test_art6_refusal_without_ground_is_rejected() -> None:
    error = rejection(without(valid("refusal"), "ground"))
    assert (error.code, error.field) == ("document.missing_field", "ground")


def test_art6_refusal_ground_comes_from_the_closed_list_of_the_agreement() -> None:
    assert set(REFUSAL_GROUNDS) == {
        "sovereignty",
        "security",
        "public_order",
        "essential_interests",
        "national_law",
        "international_obligations",
    }
    for ground in REFUSAL_GROUNDS:
        assert parsed(Refusal, valid("refusal", ground=ground)).ground == ground
    error = rejection(valid("refusal", ground="workload"))
    assert (error.code, error.field) == ("document.invalid_value", "ground")


def test_art6_refusal_is_in_full_or_in_part() -> None:
    assert parsed(Refusal, valid("refusal", scope="full")).scope == "full"
    error = rejection(valid("refusal", scope="mostly"))
    assert (error.code, error.field) == ("document.invalid_value", "scope")
    assert rejection(without(valid("refusal"), "scope")).code == "document.missing_field"


# --------------------------------------------------------------------------
# Art. 7: confidentiality, purpose, handling, consent
# --------------------------------------------------------------------------


def test_art7_every_document_carries_a_confidentiality_level_set_by_its_provider() -> None:
    for level in CONFIDENTIALITY_LEVELS:
        assert parse_document(valid("execution_result", confidentiality=level)).confidentiality == level
    assert rejection(without(valid("execution_result"), "confidentiality")).code == "document.missing_field"


def test_art7_unknown_confidentiality_level_is_rejected() -> None:
    error = rejection(valid("execution_result", confidentiality="top_secret"))
    assert (error.code, error.field) == ("document.invalid_value", "confidentiality")


def test_art7_confidentiality_levels_can_be_configured() -> None:
    vocabulary = Vocabulary(confidentiality_levels=("open", "secret"))
    doc = parse_document(valid("execution_result", confidentiality="secret"), vocabulary=vocabulary)
    assert doc.confidentiality == "secret"
    assert rejection(valid("execution_result"), vocabulary=vocabulary).field == "confidentiality"


def test_art7_handling_conditions_travel_with_the_document() -> None:
    handling = {
        "no_court_use_without_consent": True,
        "no_onward_transfer_without_consent": True,
        "conditions": ["Не передавать третьим лицам"],
    }
    doc = parse_document(valid("execution_result", handling=handling))
    assert doc.handling.no_court_use_without_consent and doc.handling.no_onward_transfer_without_consent
    assert doc.handling.conditions == ("Не передавать третьим лицам",)
    assert document_to_json(doc)["handling"] == handling


def test_art7_handling_defaults_to_no_conditions() -> None:
    doc = parse_document(valid("execution_result"))
    assert not doc.handling.no_court_use_without_consent
    assert not doc.handling.no_onward_transfer_without_consent
    assert doc.handling.conditions == ()


def test_art7_consent_request_names_the_item_and_the_new_purpose() -> None:
    for field in ("item_id", "requested_purpose", "purpose_code", "justification"):
        assert rejection(without(valid("consent_request"), field)).field == field
    error = rejection(valid("consent_request", purpose_code="в суд"))
    assert (error.code, error.field) == ("document.invalid_value", "purpose_code")


def test_art7_consent_cannot_expire_before_it_is_given() -> None:
    error = rejection(valid("consent_granted", valid_until="2024-05-01"))
    assert (error.code, error.field) == ("document.invalid_value", "valid_until")


# --------------------------------------------------------------------------
# Art. 8: Russian
# --------------------------------------------------------------------------


def test_art8_latin_content_is_rejected_naming_the_field() -> None:
    error = rejection(valid("request", content="Please provide information on border crossings"))
    assert (error.code, error.field) == ("document.not_russian", "content")
    assert "content" in str(error)


def test_art8_latin_proper_names_and_case_numbers_in_russian_text_are_allowed() -> None:
    text = "Прошу сообщить сведения о гражданине Великобритании John Smith по делу № KZ-2024/0117-AB"
    assert is_russian(text)
    assert parsed(Request, valid("request", content=text)).content == text


def test_art8_email_and_web_addresses_in_russian_text_are_allowed() -> None:
    text = "Ответ направить на адрес ivanov@prokuratura.kz, см. также https://www.prokuratura.gov.by/ru/"
    assert is_russian(text)


def test_art8_latin_acronyms_in_russian_text_are_allowed() -> None:
    assert is_russian("Сведения направлены через INTERPOL и UNODC, копия в EUROPOL")
    assert not is_russian("INTERPOL UNODC EUROPOL")


def test_art8_capitals_do_not_smuggle_in_latin_text() -> None:
    error = rejection(valid("request", other_information="NO OTHER INFORMATION"))
    assert (error.code, error.field) == ("document.not_russian", "other_information")


def test_art8_kazakh_and_belarusian_cyrillic_count_as_cyrillic() -> None:
    assert is_russian("Нұрсұлтан Әбішұлы Қайратов")
    assert is_russian("Міжнародна-прававое ўпраўленне")


@pytest.mark.parametrize(
    "text",
    [
        "Please provide information",
        "Сведения: see attached file for all the details",
        "Aqparat beruińizdi suraımyn",  # Kazakh in Latin script
        "12345",
        "—",
        "",
    ],
)
def test_art8_text_that_is_not_predominantly_cyrillic_is_not_russian(text: str) -> None:
    assert not is_russian(text)


def test_art8_required_prose_without_letters_is_rejected() -> None:
    error = rejection(valid("request", content="12345 / 2024"))
    assert (error.code, error.field) == ("document.not_russian", "content")


def test_art8_optional_text_without_letters_or_empty_is_allowed() -> None:
    assert parsed(Request, valid("request", other_information="—")).other_information == "—"
    assert parsed(OriginalReceived, valid("original_received", note="")).note == ""
    error = rejection(valid("request", other_information="No other information"))
    assert (error.code, error.field) == ("document.not_russian", "other_information")


def test_art8_language_must_be_russian() -> None:
    error = rejection(valid("acceptance", language="kk"))
    assert (error.code, error.field) == ("document.not_russian", "language")
    assert rejection(without(valid("acceptance"), "language")).code == "document.missing_field"


LATIN = "Information in English only"
MACHINE_FIELDS = {
    "kind",
    "id",
    "thread_id",
    "in_reply_to",
    "sender_party",
    "recipient_party",
    "language",
    "confidentiality",
    "requesting_party",
    "requested_party",
    "direction",
    "form",
    "scope",
    "ground",
    "item_id",
    "purpose_code",
    "case_number",
    "consent_request_id",
    "request_id",
    "tracking_number",
}


def _free_text_fields() -> list[tuple[str, str]]:
    """Every (kind, top-level field) that holds a string and is not a machine field."""
    found = []
    for kind in DOCUMENT_KINDS:
        sample = parse_document(valid(kind))
        for name in DOCUMENT_TYPES[kind].model_fields:
            wanted = name not in MACHINE_FIELDS and (name in OWN_FIELDS[kind] or name == "purpose")
            if wanted and isinstance(getattr(sample, name), (str, type(None))):
                found.append((kind, name))
    return found


@pytest.mark.parametrize(("kind", "field"), _free_text_fields())
def test_art8_every_free_text_field_of_every_kind_is_checked(kind: str, field: str) -> None:
    error = rejection(valid(kind, **{field: LATIN}))
    assert (error.code, error.field) == ("document.not_russian", field)


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("request", {"handling": {"conditions": ["Do not disclose"]}}, "handling.conditions.0"),
        (
            "directory_update",
            {"coordinating_unit": {"name": LATIN, "address": "г. Минск"}},
            "coordinating_unit.name",
        ),
        (
            "directory_update",
            {"coordinating_unit": {"name": "Отдел", "address": "Minsk, Internatsionalnaya St."}},
            "coordinating_unit.address",
        ),
        ("directory_update", {"contacts": [CONTACT, dict(CONTACT, name="Ivan Ivanov")]}, "contacts.1.name"),
        ("directory_update", {"contacts": [dict(CONTACT, position="prosecutor")]}, "contacts.0.position"),
    ],
)
def test_art8_nested_free_text_is_checked_too(kind: str, change: dict[str, Any], field: str) -> None:
    error = rejection(valid(kind, **change))
    assert (error.code, error.field) == ("document.not_russian", field)


def test_art8_the_free_text_check_covers_every_string_field_of_every_kind() -> None:
    """A new string field must be either language-checked or a named machine field."""
    checked = {field for _, field in _free_text_fields()}
    for cls in DOCUMENT_TYPES.values():
        for name, info in cls.model_fields.items():
            if "str" in str(info.annotation) and name not in MACHINE_FIELDS:
                assert name in checked, (
                    f"{cls.__name__}.{name} is neither language-checked nor a machine field"
                )


# --------------------------------------------------------------------------
# Art. 11, 14
# --------------------------------------------------------------------------


def test_art11_directory_update_lists_at_least_one_contact() -> None:
    error = rejection(valid("directory_update", contacts=[]))
    assert (error.code, error.field) == ("document.invalid_value", "contacts")


def test_art11_contact_phone_and_email_are_checked_for_form_not_language() -> None:
    assert (
        rejection(valid("directory_update", contacts=[dict(CONTACT, email="нет")])).field
        == "contacts.0.email"
    )
    assert (
        rejection(valid("directory_update", contacts=[dict(CONTACT, phone="звонить")])).field
        == "contacts.0.phone"
    )


def test_art11_directory_versions_start_at_one() -> None:
    error = rejection(valid("directory_update", version=0))
    assert (error.code, error.field) == ("document.invalid_value", "version")


def test_art14_termination_notice_records_the_day_the_notice_was_received() -> None:
    doc = parsed(TerminationNotice, valid("termination_notice"))
    assert doc.notice_received_on == date(2024, 5, 1)
    assert (
        rejection(without(valid("termination_notice"), "notice_received_on")).code == "document.missing_field"
    )


def test_direct_construction_applies_the_same_rules() -> None:
    doc = Request.model_validate(valid("request"))
    assert doc == parse_document(valid("request"))
    assert isinstance(doc, BaseDocument)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИКЛМНОПРСТУФХЦЧШЩЭЮЯӘҒҚҢӨҰҮҺІЎ"
russian = st.lists(st.text(alphabet=CYRILLIC, min_size=1, max_size=12), min_size=1, max_size=6).map(" ".join)
optional_text = st.one_of(st.just(""), russian, st.from_regex(r"[0-9 /№-]{0,10}", fullmatch=True))
uuids = st.uuids().map(str)
parties = st.from_regex(r"[A-Z]{2,3}", fullmatch=True)
times = st.datetimes(
    min_value=datetime(2014, 7, 21), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.isoformat())
later_dates = st.integers(min_value=1, max_value=3650)
references = st.from_regex(r"[A-Z0-9][A-Z0-9/-]{0,20}", fullmatch=True)
attachments = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[a-zа-я0-9_]{1,12}\.(pdf|docx)", fullmatch=True),
            "media_type": st.sampled_from(["application/pdf", "image/jpeg"]),
            "size": st.integers(min_value=0, max_value=2**40),
            "sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        }
    ),
    max_size=3,
    unique_by=lambda a: a["name"],
)
handling = st.fixed_dictionaries(
    {
        "no_court_use_without_consent": st.booleans(),
        "no_onward_transfer_without_consent": st.booleans(),
        "conditions": st.lists(russian, max_size=2),
    }
)


def _own_fields(
    kind: str, day: date, thread_id: str, sender: str, recipient: str
) -> st.SearchStrategy[dict[str, Any]]:
    later = later_dates.map(lambda n: (day + timedelta(days=n)).isoformat())
    optional_later = st.none() | later
    fields: dict[str, st.SearchStrategy[Any]] = {
        "request": st.fixed_dictionaries(
            {
                "requesting_party": st.just(sender),
                "requested_party": st.just(recipient),
                "grounds": russian,
                "purpose": russian,
                "content": russian,
                "expected_execution_date": later,
                "other_information": optional_text,
                "direction": st.sampled_from(DIRECTIONS),
                "form": st.sampled_from(FORMS),
                "urgent": st.booleans(),
            }
        ),
        "acceptance": st.fixed_dictionaries({"note": st.none() | optional_text}),
        "additional_info_request": st.fixed_dictionaries({"questions": russian}),
        "additional_info": st.fixed_dictionaries({"content": russian}),
        "delay_notice": st.fixed_dictionaries({"reason": russian, "new_expected_date": optional_later}),
        "execution_result": st.fixed_dictionaries({"summary": russian}),
        "refusal": st.fixed_dictionaries(
            {
                "scope": st.sampled_from(["full", "partial"]),
                "ground": st.sampled_from(REFUSAL_GROUNDS),
                "reason": russian,
            }
        ),
        "spontaneous_information": st.fixed_dictionaries(
            {
                "content": russian,
                "purpose": russian,
                "direction": st.sampled_from(DIRECTIONS),
                "form": st.sampled_from(FORMS),
            }
        ),
        "consent_request": st.fixed_dictionaries(
            {
                "item_id": uuids,
                "requested_purpose": russian,
                "purpose_code": st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
                "case_number": st.none() | references,
                "justification": russian,
            }
        ),
        "consent_granted": st.fixed_dictionaries(
            {"valid_until": optional_later, "case_number": st.none() | references}
        ),
        "consent_refused": st.fixed_dictionaries({"reason": russian}),
        "consent_withdrawn": st.fixed_dictionaries({"reason": russian}),
        "original_dispatched": st.fixed_dictionaries(
            {"request_id": st.just(thread_id), "dispatched_on": later, "tracking_number": references}
        ),
        "original_received": st.fixed_dictionaries(
            {
                "request_id": st.just(thread_id),
                "received_on": later,
                "matches_electronic": st.booleans(),
                "note": optional_text,
            }
        ),
        "directory_update": st.fixed_dictionaries(
            {
                "coordinating_unit": st.fixed_dictionaries({"name": russian, "address": russian}),
                "contacts": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": russian,
                            "position": russian,
                            "phone": st.from_regex(r"\+[0-9]{11}", fullmatch=True),
                            "email": st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.(kz|by)", fullmatch=True),
                        }
                    ),
                    min_size=1,
                    max_size=3,
                ),
                "version": st.integers(min_value=1, max_value=10**6),
            }
        ),
        "consultation": st.fixed_dictionaries({"subject": russian, "text": russian}),
        "termination_notice": st.fixed_dictionaries({"notice_received_on": later, "text": russian}),
    }
    return fields[kind]


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(DOCUMENT_KINDS))
    own_id, other_id, reply_to = draw(st.lists(uuids, min_size=3, max_size=3, unique=True))
    sender, recipient = draw(st.lists(parties, min_size=2, max_size=2, unique=True))
    created_at = draw(times)
    opens = kind in OPENERS and not (kind == "consultation" and draw(st.booleans()))
    thread_id = own_id if opens else other_id
    in_reply_to = None if opens else reply_to
    if kind in IN_THREAD and draw(st.booleans()):
        in_reply_to = None
    common = {
        "kind": kind,
        "id": own_id,
        "thread_id": thread_id,
        "in_reply_to": in_reply_to,
        "sender_party": sender,
        "recipient_party": recipient,
        "created_at": created_at,
        "language": "ru",
        "confidentiality": draw(st.sampled_from(CONFIDENTIALITY_LEVELS)),
        "purpose": draw(st.none() | russian),
        "handling": draw(handling),
        "attachments": draw(attachments),
    }
    own = draw(_own_fields(kind, datetime.fromisoformat(created_at).date(), thread_id, sender, recipient))
    if kind in {"consent_granted", "consent_refused", "consent_withdrawn"}:
        own["consent_request_id"] = in_reply_to
    return {**common, **own}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_documents())
def test_property_every_valid_document_round_trips_through_json(obj: dict[str, Any]) -> None:
    doc = parse_document(obj)
    as_json = document_to_json(doc)
    assert parse_document(json.loads(json.dumps(as_json))) == doc
    assert document_to_json(parse_document(as_json)) == as_json


any_text = st.text(
    st.characters() | st.characters(categories=["Cs", "Cc"]), max_size=20
)  # JSON allows lone surrogates
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = sorted({name for cls in DOCUMENT_TYPES.values() for name in cls.model_fields})


def _assert_only_document_errors(obj: Any) -> None:
    try:
        doc = parse_document(obj)
    except DocumentError as error:
        assert error.code in CODES
        assert error.field is None or isinstance(error.field, str)
    else:
        assert isinstance(doc, BaseDocument)


@settings(max_examples=300)
@given(json_values)
def test_property_arbitrary_json_raises_only_document_errors(obj: Any) -> None:
    _assert_only_document_errors(obj)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(DOCUMENT_KINDS)},
        optional={name: json_values for name in FIELD_NAMES if name != "kind"},
    )
)
def test_property_garbage_fields_under_a_known_kind_raise_only_document_errors(obj: dict[str, Any]) -> None:
    _assert_only_document_errors(obj)


CROSS_FIELD_CODES = {"document.party_mismatch", "document.thread_mismatch", "document.duplicate_attachment"}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_documents(), st.data())
def test_property_one_corrupted_field_is_rejected_naming_it_or_still_valid(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    field = data.draw(st.sampled_from(sorted(set(obj) - {"kind"})))
    corrupted = {**obj, field: data.draw(json_values)}
    try:
        doc = parse_document(corrupted)
    except DocumentError as error:
        assert error.code in CODES
        assert error.field is not None
        assert error.field.split(".")[0] == field or error.code in CROSS_FIELD_CODES
    else:  # some garbage is valid, e.g. None for an optional field
        assert parse_document(document_to_json(doc)) == doc

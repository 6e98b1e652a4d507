"""The documents the agreement asks for: one typed model per message kind.

A document is what a responsible person signs and what travels, encrypted,
inside an envelope. Its model holds the agreement's rules for that kind:
Art. 4 (a)-(e) for requests, Art. 6 ground and reason for refusals, Art. 7
confidentiality, purpose and handling conditions, Art. 8 Russian in every
free-text field, Art. 11 contacts, Art. 14 termination notices.

``parse_document`` is the one way in from untrusted JSON. It raises only
``DocumentError`` (stable ``code``, offending ``field``): no pydantic error and
no other exception may escape it. Error messages never quote the input, because
the input may be confidential case material that ends up in logs.

Pure: no I/O, no clock (``created_at`` is data, never "now").
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._errors import DocumentError

# --------------------------------------------------------------------------
# Closed lists (Art. 2, 3, 6, 7). Directions, forms and confidentiality levels
# may be extended by configuration (Art. 2 last paragraph, Art. 12): pass a
# ``Vocabulary`` to ``parse_document``. Refusal grounds are the agreement's own
# text and are not configurable.
# --------------------------------------------------------------------------

DIRECTIONS: Final[tuple[str, ...]] = (
    "human_rights",
    "terrorism",
    "corruption",
    "arms_trafficking",
    "drugs",
    "illegal_migration",
    "human_trafficking",
    "economic_crime",
    "it_crime",
    "other_crime",
    "legal_consultation",
    "experience_exchange",
    "joint_research",
    "training",
)

FORMS: Final[tuple[str, ...]] = (
    "crime_information",
    "experience_exchange",
    "pre_investigation_assistance",
    "citizen_applications",
    "legislation_exchange",
    "meetings_consultations",
    "training",
    "joint_research",
    "statistics_exchange",
    "teaching_literature",
)

CONFIDENTIALITY_LEVELS: Final[tuple[str, ...]] = ("unrestricted", "official_use", "confidential")

RefusalGround = Literal[
    "sovereignty",
    "security",
    "public_order",
    "essential_interests",
    "national_law",
    "international_obligations",
]
REFUSAL_GROUNDS: Final[tuple[str, ...]] = get_args(RefusalGround)

#: Share of letters that must be Cyrillic for text to count as Russian (Art. 8).
MIN_CYRILLIC_SHARE: Final = Fraction(3, 5)


@dataclass(frozen=True)
class Vocabulary:
    """The configurable closed lists a node validates against (Art. 2, 3, 7, 12)."""

    confidentiality_levels: tuple[str, ...] = CONFIDENTIALITY_LEVELS
    directions: tuple[str, ...] = DIRECTIONS
    forms: tuple[str, ...] = FORMS


DEFAULT_VOCABULARY: Final = Vocabulary()

# --------------------------------------------------------------------------
# Art. 8: Russian text
# --------------------------------------------------------------------------


def _is_machine_token(token: str) -> bool:
    """E-mail addresses, URLs and anything with a digit (case numbers, house
    numbers, ``KZ-2024/15``) are not language, so they do not count either way."""
    return (
        "@" in token or "://" in token or token.lower().startswith("www.") or any(c.isdigit() for c in token)
    )


@functools.lru_cache(maxsize=4096)
def _is_cyrillic(char: str) -> bool:
    # Cached: a text has few distinct letters, and the name lookup dominates validation otherwise.
    return unicodedata.name(char, "").startswith("CYRILLIC")


#: Tokens up to this length have their letter counts cached (words recur; a huge token must not be kept).
_CACHED_TOKEN_LENGTH: Final = 64


def _token_letter_counts(token: str) -> tuple[int, int, int]:
    """(Cyrillic letters, other letters, acronym letters) of one whitespace-separated token."""
    if _is_machine_token(token):
        return 0, 0, 0
    letters = [char for char in token if char.isalpha()]
    cyrillic = sum(1 for char in letters if _is_cyrillic(char))
    if len(letters) >= 2 and not cyrillic and all(char.isupper() for char in letters):
        return 0, 0, len(letters)
    return cyrillic, len(letters) - cyrillic, 0


# Cached: prose repeats its words, within a document and from one document to the next.
_cached_token_letter_counts = functools.lru_cache(maxsize=16384)(_token_letter_counts)


def _letter_counts(text: str) -> tuple[int, int, int]:
    """(Cyrillic letters, other letters, letters of Latin acronyms), ignoring machine tokens.

    Acronyms (``INTERPOL``, ``UNODC``) are common in Russian legal prose, so
    they neither help nor hurt the Cyrillic share; they still count as letters.
    """
    cyrillic = other = acronym = 0
    for token in text.split():
        if len(token) <= _CACHED_TOKEN_LENGTH:
            c, o, a = _cached_token_letter_counts(token)
        else:
            c, o, a = _token_letter_counts(token)
        cyrillic += c
        other += o
        acronym += a
    return cyrillic, other, acronym


def _russian_share(cyrillic: int, other: int) -> bool:
    # In integers (Fraction arithmetic costs more than counting the letters did).
    share = MIN_CYRILLIC_SHARE
    return cyrillic > 0 and cyrillic * share.denominator >= share.numerator * (cyrillic + other)


def is_russian(text: str) -> bool:
    """Whether ``text`` reads as Russian for the purposes of Art. 8.

    At least ``MIN_CYRILLIC_SHARE`` of its letters must be Cyrillic, so Latin
    proper names, acronyms, case numbers, e-mail and web addresses inside a
    Russian sentence pass, while a Latin-script text does not. Kazakh and
    Belarusian Cyrillic letters count as Cyrillic (names are written in them).
    Text without a Cyrillic letter is never Russian: where a field may hold
    only a number or a dash, the caller allows letterless text explicitly.
    """
    cyrillic, other, _ = _letter_counts(text)
    return _russian_share(cyrillic, other)


_ALLOWED_CONTROLS: Final = frozenset("\t\n\r")
#: Unicode categories Cc (U+0000-001F, U+007F-009F) and Cs (surrogates), except tab, LF and CR.
_FORBIDDEN_CHARACTERS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_characters(value: str) -> None:
    """Lone surrogates cannot be encoded as UTF-8 and control characters (NUL
    above all) break storage and display, so neither may hide in free text."""
    if _FORBIDDEN_CHARACTERS.search(value):
        raise PydanticCustomError("document.invalid_value", "text contains a control or surrogate character")


def _prose(value: str) -> str:
    """Required free text: must say something, in Russian."""
    _check_characters(value)
    if not value.strip():
        raise PydanticCustomError("document.missing_field", "required text is empty")
    if not is_russian(value):
        raise PydanticCustomError("document.not_russian", "text must be in Russian (Art. 8)")
    return value


def _free_text(value: str) -> str:
    """Optional free text: may be empty or letterless (a dash, a number), else Russian."""
    _check_characters(value)
    cyrillic, other, acronym = _letter_counts(value)
    if cyrillic + other + acronym and not _russian_share(cyrillic, other):
        raise PydanticCustomError("document.not_russian", "text must be in Russian (Art. 8)")
    return value


#: Required Russian prose: grounds, content, reasons, questions, results...
RussianProse = Annotated[str, Field(strict=True), AfterValidator(_prose)]
#: Optional Russian text: may be empty or contain no letters at all.
RussianText = Annotated[str, Field(strict=True), AfterValidator(_free_text)]

# --------------------------------------------------------------------------
# Machine fields (never language-checked)
# --------------------------------------------------------------------------


def _uuid_text(value: str) -> str:
    """Canonical form only, so that one message has exactly one id string."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise PydanticCustomError("document.invalid_value", "a UUID is expected") from None
    if canonical != value:
        raise PydanticCustomError(
            "document.invalid_value", "a UUID in canonical lower-case hyphenated form is expected"
        )
    return value


def _reference(value: str) -> str:
    """Case and tracking numbers: printable, non-blank, no surrounding spaces."""
    if not value or value.strip() != value or not value.isprintable():
        raise PydanticCustomError(
            "document.invalid_value", "a non-empty printable reference without surrounding spaces is expected"
        )
    return value


def _file_name(value: str) -> str:
    """Receivers may store attachments under their name: no paths, no control characters."""
    if value in {"", ".", ".."} or "/" in value or "\\" in value or not value.isprintable():
        raise PydanticCustomError("document.invalid_value", "a plain file name is expected")
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def _to_date(value: object) -> date:
    """Dates arrive as ``YYYY-MM-DD`` in JSON; a date-time is not a date."""
    if value is None:
        raise PydanticCustomError("document.missing_field", "a date is required")
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise PydanticCustomError("document.invalid_value", "a date in the form YYYY-MM-DD is expected")


def _to_utc(value: object) -> datetime:
    """Accept any explicit offset and normalise to UTC; a naive time is ambiguous
    between Astana and Minsk, so it is refused."""
    if value is None:
        raise PydanticCustomError("document.missing_field", "a date-time is required")
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _ISO_DATETIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None:
        raise PydanticCustomError(
            "document.invalid_value", "an ISO 8601 date-time with a time zone offset is expected"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError("document.invalid_value", "the date-time must carry a time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("document.invalid_value", "the date-time is out of range") from None


def _vocabulary(info: ValidationInfo) -> Vocabulary:
    context = info.context
    if isinstance(context, Mapping):
        vocabulary = context.get("vocabulary")
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
    return DEFAULT_VOCABULARY


def _confidentiality(value: str, info: ValidationInfo) -> str:
    if value not in _vocabulary(info).confidentiality_levels:
        raise PydanticCustomError("document.invalid_value", "unknown confidentiality level (Art. 7)")
    return value


def _direction(value: str, info: ValidationInfo) -> str:
    if value not in _vocabulary(info).directions:
        raise PydanticCustomError("document.invalid_value", "unknown direction of cooperation (Art. 2)")
    return value


def _form(value: str, info: ValidationInfo) -> str:
    if value not in _vocabulary(info).forms:
        raise PydanticCustomError("document.invalid_value", "unknown form of cooperation (Art. 3)")
    return value


UuidText = Annotated[str, Field(strict=True), AfterValidator(_uuid_text)]
PartyCode = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[A-Z]{2,3}$")]
Reference = Annotated[str, Field(strict=True, max_length=128), AfterValidator(_reference)]
PurposeCode = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
FileName = Annotated[str, Field(strict=True, max_length=255), AfterValidator(_file_name)]
MediaType = Annotated[
    str, Field(strict=True), StringConstraints(pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
]
Sha256Hex = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Phone = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^\+?[0-9][0-9 ()-]{3,30}$")]
Email = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[\w.%+-]+@[\w-]+(\.[\w-]+)+$")]
IsoDate = Annotated[date, BeforeValidator(_to_date)]
UtcDateTime = Annotated[datetime, BeforeValidator(_to_utc)]
Confidentiality = Annotated[str, Field(strict=True), AfterValidator(_confidentiality)]
Direction = Annotated[str, Field(strict=True), AfterValidator(_direction)]
Form = Annotated[str, Field(strict=True), AfterValidator(_form)]

# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _fail(code: str, field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(code, message, {"field": field})


class Handling(_Frozen):
    """Conditions the provider attaches to what it gives (Art. 7)."""

    no_court_use_without_consent: StrictBool = False
    no_onward_transfer_without_consent: StrictBool = False
    conditions: tuple[RussianProse, ...] = ()


class AttachmentRef(_Frozen):
    """Names an attachment that travels encrypted beside the document; the hash binds it to the signature."""

    name: FileName
    media_type: MediaType
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256Hex


#: How a kind relates to threads: ``opens`` its own thread (thread_id == id, no
#: in_reply_to); ``reply`` answers a message in an existing thread (in_reply_to
#: required); ``in_thread`` belongs to an existing thread (in_reply_to optional);
#: ``opens_or_replies`` opens a thread unless it answers a message in one.
ThreadRule = Literal["opens", "reply", "in_thread", "opens_or_replies"]


class BaseDocument(_Frozen):
    """Fields every document carries; ``id`` is also the envelope's message id."""

    kind: str
    id: UuidText
    thread_id: UuidText
    in_reply_to: UuidText | None = None
    sender_party: PartyCode
    recipient_party: PartyCode
    created_at: UtcDateTime
    language: Literal["ru"]
    confidentiality: Confidentiality
    purpose: RussianProse | None = None
    #: Art. 7: the purpose (closed-list code) and case an item is bound to, set by its provider or,
    #: for a request, by the requesting Party; readers must state the same to use it.
    purpose_code: PurposeCode | None = None
    case_number: Reference | None = None
    handling: Handling = Handling()
    attachments: tuple[AttachmentRef, ...] = ()

    thread_rule: ClassVar[ThreadRule] = "reply"

    @model_validator(mode="after")
    def _check_common(self) -> BaseDocument:
        if self.sender_party == self.recipient_party:
            raise _fail(
                "document.party_mismatch", "recipient_party", "sender and recipient must be different Parties"
            )
        names = [a.name for a in self.attachments]
        if len(set(names)) != len(names):
            raise _fail("document.duplicate_attachment", "attachments", "attachment names must be unique")
        self._check_thread()
        return self

    def _check_thread(self) -> None:
        rule = self.thread_rule
        if self.in_reply_to == self.id:
            raise _fail("document.thread_mismatch", "in_reply_to", "a message cannot answer itself")
        opens = rule == "opens" or (rule == "opens_or_replies" and self.in_reply_to is None)
        if opens:
            if self.in_reply_to is not None:
                raise _fail(
                    "document.thread_mismatch",
                    "in_reply_to",
                    f"a {self.kind} opens a thread and answers nothing",
                )
            if self.thread_id != self.id:
                raise _fail(
                    "document.thread_mismatch",
                    "thread_id",
                    f"a {self.kind} opens its own thread: thread_id must equal id",
                )
            return
        if self.thread_id == self.id:
            raise _fail(
                "document.thread_mismatch", "thread_id", f"a {self.kind} belongs to an existing thread"
            )
        if rule == "reply" and self.in_reply_to is None:
            raise _fail(
                "document.missing_field", "in_reply_to", f"a {self.kind} must name the message it answers"
            )


class Request(BaseDocument):
    """Art. 4: the basis of cooperation. Fields (a)-(e) are all required."""

    kind: Literal["request"] = "request"
    requesting_party: PartyCode
    requested_party: PartyCode
    grounds: RussianProse
    purpose: RussianProse
    content: RussianProse
    expected_execution_date: IsoDate
    other_information: RussianText
    direction: Direction
    form: Form
    urgent: StrictBool = False

    thread_rule: ClassVar[ThreadRule] = "opens"

    @model_validator(mode="after")
    def _check_request(self) -> Request:
        if self.requesting_party != self.sender_party:
            raise _fail(
                "document.party_mismatch", "requesting_party", "the requesting Party must be the sender"
            )
        if self.requested_party != self.recipient_party:
            raise _fail(
                "document.party_mismatch", "requested_party", "the requested Party must be the recipient"
            )
        if self.expected_execution_date < self.created_at.date():
            raise _fail(
                "document.invalid_value",
                "expected_execution_date",
                "the expected execution date precedes the request",
            )
        return self


class Acceptance(BaseDocument):
    """Art. 5: the requested Party has taken the request for execution."""

    kind: Literal["acceptance"] = "acceptance"
    note: RussianText | None = None


class AdditionalInfoRequest(BaseDocument):
    """Art. 5: the requested Party asks for more information."""

    kind: Literal["additional_info_request"] = "additional_info_request"
    questions: RussianProse


class AdditionalInfo(BaseDocument):
    """Art. 5: the requesting Party answers a request for more information."""

    kind: Literal["additional_info"] = "additional_info"
    content: RussianProse


class DelayNotice(BaseDocument):
    """Art. 5: circumstances that prevent or seriously delay execution, told at once."""

    kind: Literal["delay_notice"] = "delay_notice"
    reason: RussianProse
    new_expected_date: IsoDate | None = None

    @model_validator(mode="after")
    def _check_delay(self) -> DelayNotice:
        if self.new_expected_date is not None and self.new_expected_date < self.created_at.date():
            raise _fail(
                "document.invalid_value", "new_expected_date", "the new expected date precedes the notice"
            )
        return self


class ExecutionResult(BaseDocument):
    """Art. 5: the results of execution (for a partly refused request, of the rest)."""

    kind: Literal["execution_result"] = "execution_result"
    summary: RussianProse


class Refusal(BaseDocument):
    """Art. 6: refusal in full or in part, always with a ground and written reasons."""

    kind: Literal["refusal"] = "refusal"
    scope: Literal["full", "partial"]
    ground: RefusalGround
    reason: RussianProse


class SpontaneousInformation(BaseDocument):
    """Art. 4 last paragraph: information given without a request; its provider sets the purpose."""

    kind: Literal["spontaneous_information"] = "spontaneous_information"
    content: RussianProse
    purpose: RussianProse
    direction: Direction
    form: Form

    thread_rule: ClassVar[ThreadRule] = "opens"


class ConsentRequest(BaseDocument):
    """Art. 7: asks the provider to allow a use other than the one the item was given for."""

    kind: Literal["consent_request"] = "consent_request"
    item_id: UuidText
    requested_purpose: RussianProse
    purpose_code: PurposeCode
    case_number: Reference | None = None
    justification: RussianProse

    thread_rule: ClassVar[ThreadRule] = "in_thread"


class ConsentGranted(BaseDocument):
    """Art. 7: the provider's prior written consent."""

    kind: Literal["consent_granted"] = "consent_granted"
    consent_request_id: UuidText
    valid_until: IsoDate | None = None
    case_number: Reference | None = None

    @model_validator(mode="after")
    def _check_answer(self) -> ConsentGranted:
        if self.in_reply_to != self.consent_request_id:
            raise _fail(
                "document.thread_mismatch",
                "consent_request_id",
                "consent answers the consent request it names",
            )
        if self.valid_until is not None and self.valid_until < self.created_at.date():
            raise _fail("document.invalid_value", "valid_until", "consent cannot expire before it is given")
        return self


class ConsentRefused(BaseDocument):
    """Art. 7: the provider does not allow the other use."""

    kind: Literal["consent_refused"] = "consent_refused"
    consent_request_id: UuidText
    reason: RussianProse

    @model_validator(mode="after")
    def _check_answer(self) -> ConsentRefused:
        if self.in_reply_to != self.consent_request_id:
            raise _fail(
                "document.thread_mismatch",
                "consent_request_id",
                "a refusal answers the consent request it names",
            )
        return self


class ConsentWithdrawn(BaseDocument):
    """Art. 7: the provider withdraws a consent it gave, for any use from now on."""

    kind: Literal["consent_withdrawn"] = "consent_withdrawn"
    consent_request_id: UuidText
    reason: RussianProse

    @model_validator(mode="after")
    def _check_answer(self) -> ConsentWithdrawn:
        if self.in_reply_to != self.consent_request_id:
            raise _fail(
                "document.thread_mismatch",
                "consent_request_id",
                "a withdrawal answers the consent request it names",
            )
        return self


class OriginalDispatched(BaseDocument):
    """Art. 4: the paper original of an urgent request has been posted."""

    kind: Literal["original_dispatched"] = "original_dispatched"
    request_id: UuidText
    dispatched_on: IsoDate
    tracking_number: Reference

    thread_rule: ClassVar[ThreadRule] = "in_thread"

    @model_validator(mode="after")
    def _check_request_id(self) -> OriginalDispatched:
        if self.request_id != self.thread_id:
            raise _fail(
                "document.thread_mismatch", "request_id", "the original belongs to the request of its thread"
            )
        return self


class OriginalReceived(BaseDocument):
    """Art. 4: the paper original arrived; closes the "original owed by post" obligation."""

    kind: Literal["original_received"] = "original_received"
    request_id: UuidText
    received_on: IsoDate
    matches_electronic: StrictBool
    note: RussianText

    thread_rule: ClassVar[ThreadRule] = "in_thread"

    @model_validator(mode="after")
    def _check_request_id(self) -> OriginalReceived:
        if self.request_id != self.thread_id:
            raise _fail(
                "document.thread_mismatch", "request_id", "the original belongs to the request of its thread"
            )
        return self


class CoordinatingUnit(_Frozen):
    """Art. 11: the unit through which a Party cooperates."""

    name: RussianProse
    address: RussianProse


class Contact(_Frozen):
    """Art. 11: a designated contact person."""

    name: RussianProse
    position: RussianProse
    phone: Phone
    email: Email


class DirectoryUpdate(BaseDocument):
    """Art. 11: the sender's full current directory; a higher version replaces a lower one."""

    kind: Literal["directory_update"] = "directory_update"
    coordinating_unit: CoordinatingUnit
    contacts: Annotated[tuple[Contact, ...], Field(min_length=1)]
    version: Annotated[StrictInt, Field(ge=1)]

    thread_rule: ClassVar[ThreadRule] = "opens"


class Consultation(BaseDocument):
    """Art. 10: disputes are settled by consultations; a consultation opens or continues its own thread."""

    kind: Literal["consultation"] = "consultation"
    subject: RussianProse
    text: RussianProse

    thread_rule: ClassVar[ThreadRule] = "opens_or_replies"


class TerminationNotice(BaseDocument):
    """Art. 14: records the written notice received through diplomatic channels.

    The notice period runs from ``notice_received_on``.
    """

    kind: Literal["termination_notice"] = "termination_notice"
    notice_received_on: IsoDate
    text: RussianProse

    thread_rule: ClassVar[ThreadRule] = "opens"


Document = Annotated[
    (
        Request
        | Acceptance
        | AdditionalInfoRequest
        | AdditionalInfo
        | DelayNotice
        | ExecutionResult
        | Refusal
        | SpontaneousInformation
        | ConsentRequest
        | ConsentGranted
        | ConsentRefused
        | ConsentWithdrawn
        | OriginalDispatched
        | OriginalReceived
        | DirectoryUpdate
        | Consultation
        | TerminationNotice
    ),
    Field(discriminator="kind"),
]

DOCUMENT_TYPES: Final[Mapping[str, type[BaseDocument]]] = {
    cls.model_fields["kind"].default: cls
    for cls in (
        Request,
        Acceptance,
        AdditionalInfoRequest,
        AdditionalInfo,
        DelayNotice,
        ExecutionResult,
        Refusal,
        SpontaneousInformation,
        ConsentRequest,
        ConsentGranted,
        ConsentRefused,
        ConsentWithdrawn,
        OriginalDispatched,
        OriginalReceived,
        DirectoryUpdate,
        Consultation,
        TerminationNotice,
    )
}
DOCUMENT_KINDS: Final[tuple[str, ...]] = tuple(DOCUMENT_TYPES)

# --------------------------------------------------------------------------
# The one door in, and the way out
# --------------------------------------------------------------------------


def _field_path(loc: tuple[int | str, ...]) -> str | None:
    """Dotted path such as ``contacts.1.email``; capped, since unknown keys come from the sender."""
    return ".".join(str(part) for part in loc)[:200] or None


def _to_document_error(exc: ValidationError, kind: str) -> DocumentError:
    """Report the first problem, with our code and the field's dotted path."""
    errors = exc.errors(include_url=False, include_input=True)
    first = errors[0]
    error_type = first["type"]
    field = _field_path(first["loc"])
    context = first.get("ctx") or {}
    if field is None and isinstance(context.get("field"), str):
        field = context["field"]
    message = first["msg"]
    if error_type.startswith("document."):
        code = error_type
    elif error_type == "missing" or first.get("input", 0) is None:
        code, message = "document.missing_field", "a value is required"
    elif error_type == "extra_forbidden":
        code = "document.unknown_field"
    elif field == "language" and error_type == "literal_error":
        code = "document.not_russian"
    else:
        code = "document.invalid_value"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return DocumentError(f"{kind}.{field or '?'}: {message}{more}", code=code, field=field)


def parse_document(obj: Any, *, vocabulary: Vocabulary | None = None) -> Document:
    """Validate a decoded JSON object as a document of the kind it names.

    ``vocabulary`` carries the configured closed lists (Art. 2, 3, 7); the
    agreement's defaults apply when it is omitted.
    """
    if not isinstance(obj, dict):
        raise DocumentError("a document must be a JSON object", code="document.malformed")
    kind = obj.get("kind")
    if kind is None:
        raise DocumentError("the document kind is missing", code="document.missing_field", field="kind")
    if not isinstance(kind, str) or kind not in DOCUMENT_TYPES:
        raise DocumentError("unknown document kind", code="document.unknown_kind", field="kind")
    context = {"vocabulary": vocabulary or DEFAULT_VOCABULARY}
    try:
        document = DOCUMENT_TYPES[kind].model_validate(obj, context=context)
    except ValidationError as exc:
        raise _to_document_error(exc, kind) from None
    return document  # type: ignore[return-value]  # DOCUMENT_TYPES holds only Document members


def document_to_json(document: BaseDocument) -> dict[str, Any]:
    """JSON-compatible form (ISO dates, UTC times with ``Z``, lists); ``parse_document`` inverts it."""
    return document.model_dump(mode="json")

"""In-memory fixtures for the protocol tests: two Parties (KZ and BY) and valid documents.

Nothing here touches the disk, the network or the clock: keys are generated in
memory, bundles and authorisations are signed in memory, and time is the fixed
``NOW``. Tests may import the helpers directly
(``from tests.protocol.conftest import NOW, make_party, ...``) or use the
fixtures.

* ``make_party`` builds one Party: root key, node signing key, HPKE decryption
  key of a chosen suite, a signatory with a signing authorisation from the
  root (Art. 4), the signed bundle and the ``TrustedParty`` obtained through
  ``verify_bundle`` with the root's fingerprint, exactly as a peer would.
* ``parties(suite)`` caches one KZ/BY pair per suite (key generation is the
  slow part); the ``suite`` fixture parametrises a test over both suites.
* ``Documents`` builds valid document JSON (a Russian request, replies to it...);
  ``sealed`` signs a document as the Party's signatory and seals it.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from protocol import (
    CLASSIC,
    PQ_HYBRID,
    Authorisation,
    BundleContents,
    DecryptionKey,
    KeyValidity,
    NodeKeys,
    Revocation,
    SigningKey,
    TrustedParty,
    VerifyKey,
    fingerprint,
    issue_authorisation,
    parse_document,
    seal,
    sign_bundle,
    sign_document,
    verify_bundle,
)
from protocol._documents import BaseDocument

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
#: When the keys in the fixtures' bundles became valid.
KEYS_FROM = NOW - timedelta(days=365)
#: The signatories' authorisation period (Art. 4).
AUTH_FROM = date(2026, 1, 1)
AUTH_UNTIL = date(2026, 12, 31)
#: A stand-in for the TLS CA certificate a real bundle carries (the protocol never parses it).
DUMMY_CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "TUlJQmR1bW15LXRlc3QtY2EtZm9yLXByb2xpbmstcHJvdG9jb2wtdGVzdHM=\n"
    "-----END CERTIFICATE-----\n"
)
SUITES = (PQ_HYBRID, CLASSIC)
SUITE_IDS = {PQ_HYBRID: "pq-hybrid", CLASSIC: "classic"}
NAMES = {
    "KZ": "Генеральная прокуратура Республики Казахстан",
    "BY": "Генеральная прокуратура Республики Беларусь",
}


@dataclass(frozen=True)
class Party:
    """Everything one Party's node holds, plus what its peer trusts about it."""

    code: str
    suite: str
    root: SigningKey
    node: SigningKey
    decryption: DecryptionKey
    signatory: SigningKey
    contents: BundleContents
    bundle: bytes = field(repr=False)
    trusted: TrustedParty = field(repr=False)
    keys: NodeKeys = field(repr=False)
    authorisation: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.root.public)


def make_authorisation(
    code: str,
    root: SigningKey,
    signatory: VerifyKey,
    *,
    valid_from: date = AUTH_FROM,
    valid_until: date = AUTH_UNTIL,
    person: str = "Иванов Иван Иванович",
    position: str = "заместитель Генерального прокурора",
) -> bytes:
    return issue_authorisation(
        Authorisation(
            party=code,
            person=person,
            position=position,
            key=signatory,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=KEYS_FROM,
        ),
        root,
    )


def make_party(
    code: str,
    suite: str = PQ_HYBRID,
    *,
    root: SigningKey | None = None,
    node: SigningKey | None = None,
    decryption: DecryptionKey | None = None,
    signatory: SigningKey | None = None,
    node_valid_from: datetime = KEYS_FROM,
    node_valid_until: datetime | None = None,
    encryption_valid_until: datetime | None = None,
    extra_signing_keys: Sequence[tuple[VerifyKey, KeyValidity]] = (),
    revocations: Sequence[Revocation] = (),
    auth_from: date = AUTH_FROM,
    auth_until: date = AUTH_UNTIL,
    version: int = 1,
    endpoint: str | None = None,
) -> Party:
    """One Party, built the way ``keys/`` will build it, all in memory."""
    root = root or SigningKey.generate()
    node = node or SigningKey.generate()
    decryption = decryption or DecryptionKey.generate(suite)
    signatory = signatory or SigningKey.generate()
    contents = BundleContents(
        party=code,
        name=NAMES.get(code, code),
        endpoint=endpoint or f"https://prolink.{code.lower()}.example:8443",
        version=version,
        issued_at=KEYS_FROM,
        root=root.public,
        signing_keys=(
            (node.public, KeyValidity(node.key_id, node_valid_from, node_valid_until)),
            *extra_signing_keys,
        ),
        encryption_keys=(
            (decryption.public, KeyValidity(decryption.key_id, KEYS_FROM, encryption_valid_until)),
        ),
        tls_ca_pem=DUMMY_CA_PEM,
        revocations=tuple(revocations),
    )
    bundle = sign_bundle(contents, root)
    trusted = verify_bundle(bundle, expected_fingerprint=fingerprint(root.public))
    return Party(
        code=code,
        suite=suite,
        root=root,
        node=node,
        decryption=decryption,
        signatory=signatory,
        contents=contents,
        bundle=bundle,
        trusted=trusted,
        keys=NodeKeys(code, node, (decryption,)),
        authorisation=make_authorisation(
            code, root, signatory.public, valid_from=auth_from, valid_until=auth_until
        ),
    )


@functools.cache
def parties(suite: str = PQ_HYBRID) -> tuple[Party, Party]:
    """One KZ/BY pair per suite, shared by every test (keys are immutable)."""
    return make_party("KZ", suite), make_party("BY", suite)


def rebuild(party: Party, **changes: Any) -> Party:
    """The same Party's keys with a different bundle (validity, revocations, extra keys...)."""
    return make_party(
        party.code,
        party.suite,
        root=party.root,
        node=party.node,
        decryption=party.decryption,
        signatory=party.signatory,
        **changes,
    )


# --- documents -----------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def attachment_ref(name: str, data: bytes, media_type: str = "application/octet-stream") -> dict[str, Any]:
    return {
        "name": name,
        "media_type": media_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


class Documents:
    """Valid document JSON for each kind the tests need; keyword arguments override fields."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def _base(
        self,
        kind: str,
        sender: str,
        recipient: str,
        *,
        id: str | None = None,
        thread_id: str | None = None,
        in_reply_to: str | None = None,
        created_at: datetime | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        confidentiality: str = "confidential",
    ) -> dict[str, Any]:
        doc_id = id or new_id()
        return {
            "kind": kind,
            "id": doc_id,
            "thread_id": thread_id or doc_id,
            "in_reply_to": in_reply_to,
            "sender_party": sender,
            "recipient_party": recipient,
            "created_at": (created_at or self.now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "language": "ru",
            "confidentiality": confidentiality,
            "attachments": list(attachments),
        }

    def request(
        self,
        sender: str = "KZ",
        recipient: str = "BY",
        *,
        id: str | None = None,
        created_at: datetime | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        """Art. 4 request with (a)-(e) filled in, in Russian (Art. 8)."""
        doc = self._base("request", sender, recipient, id=id, created_at=created_at, attachments=attachments)
        created = created_at or self.now - timedelta(hours=1)
        doc.update(
            {
                "requesting_party": sender,
                "requested_party": recipient,
                "grounds": "Уголовное дело № 2026-0415 по признакам преступления, "
                "предусмотренного статьёй 297 УК",
                "purpose": "Установление источника поставки наркотических средств",
                "content": "Просим предоставить сведения о регистрации ООО «Восток-Транзит» "
                "и о движении денежных средств по его счетам.",
                "expected_execution_date": (created + timedelta(days=30)).date().isoformat(),
                "other_information": "Контактное лицо: старший прокурор Петров П.П., тел. +7 7172 71 00 00.",
                "direction": "drugs",
                "form": "crime_information",
                "urgent": False,
            }
        )
        doc.update(fields)
        return doc

    def acceptance(self, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
        doc = self._reply("acceptance", request, **fields)
        doc.setdefault("note", "Запрос принят к исполнению.")
        return doc

    def execution_result(self, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Art. 5 results, from the requested Party back to the requesting one."""
        doc = self._reply("execution_result", request, **fields)
        doc.setdefault("summary", "Запрошенные сведения собраны и направляются в приложении.")
        return doc

    def refusal(self, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Art. 6 refusal with a ground from the closed list and a written reason."""
        doc = self._reply("refusal", request, **fields)
        doc.setdefault("scope", "full")
        doc.setdefault("ground", "national_law")
        doc.setdefault("reason", "Исполнение запроса противоречит законодательству запрашиваемой Стороны.")
        return doc

    def _reply(
        self,
        kind: str,
        request: dict[str, Any],
        *,
        id: str | None = None,
        created_at: datetime | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        doc = self._base(
            kind,
            request["recipient_party"],
            request["sender_party"],
            id=id,
            thread_id=request["thread_id"],
            in_reply_to=request["id"],
            created_at=created_at,
            attachments=attachments,
        )
        doc["purpose"] = request.get("purpose")
        doc.update(fields)
        return doc

    @staticmethod
    def parse(doc: dict[str, Any]) -> BaseDocument:
        return parse_document(doc)  # type: ignore[return-value]


def sign(party: Party, doc: dict[str, Any], signer: SigningKey | None = None) -> bytes:
    """The signatory's DSSE signature over ``doc`` (Art. 4)."""
    return sign_document(parse_document(doc), signer or party.signatory)


def sealed(
    sender: Party,
    recipient: Party,
    doc: dict[str, Any],
    attachments: Sequence[bytes] = (),
    *,
    now: datetime = NOW,
    signer: SigningKey | None = None,
    authorisation: bytes | None = None,
) -> bytes:
    """Sign ``doc`` as ``sender``'s signatory and seal it for ``recipient``."""
    return seal(
        sign(sender, doc, signer),
        authorisation or sender.authorisation,
        list(attachments),
        sender.keys,
        recipient.trusted,
        now,
    )


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(params=SUITES, ids=[SUITE_IDS[s] for s in SUITES])
def suite(request: pytest.FixtureRequest) -> str:
    """Both HPKE suites: the post-quantum hybrid default and plain X25519."""
    return str(request.param)


@pytest.fixture
def kz(suite: str) -> Party:
    return parties(suite)[0]


@pytest.fixture
def by(suite: str) -> Party:
    return parties(suite)[1]


@pytest.fixture
def kz_pq() -> Party:
    """KZ with the default suite, for tests where the suite does not matter."""
    return parties(PQ_HYBRID)[0]


@pytest.fixture
def by_pq() -> Party:
    return parties(PQ_HYBRID)[1]


@pytest.fixture
def docs() -> Documents:
    return Documents(NOW)


@pytest.fixture
def now() -> datetime:
    return NOW

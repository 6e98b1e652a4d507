"""Build prolink's published test vectors (``tests/vectors/v1.json``) from fixed seeds and a fixed time.

Usage (from the repository root)::

    python tests/vectors/generate.py            # rewrite v1.json (keeps the recorded envelopes)
    python tests/vectors/generate.py --check    # exit 1 if v1.json is not what this script builds
    python tests/vectors/generate.py --new-envelopes   # also re-record the two envelopes

Every key is derived from a label: ``seed(label, n) = SHAKE-256("prolink-test-vector-v1" 0x00
label)[:n]`` (Ed25519: 32-byte seed; X25519: 32-byte scalar; ML-KEM-768: 64-byte ``d || z``
seed). Ed25519 signatures are deterministic, so bundles, authorisations, the
revocation, signed documents and receipts are reproduced byte for byte. HPKE
encryption is randomised, so the two envelopes (one per suite) are *recorded*:
a second implementation checks that they open, with the fixed keys at the
fixed time, to the recorded document and attachment.

These keys are public test keys: never use them for anything else.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script
    sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    ACCEPTED,
    CLASSIC,
    PQ_HYBRID,
    Authorisation,
    BundleContents,
    DecryptionKey,
    KeyValidity,
    NodeKeys,
    Signed,
    SigningKey,
    TrustedParty,
    document_to_json,
    fingerprint,
    issue_authorisation,
    issue_revocation,
    open,
    pae,
    parse_document,
    read_framing,
    receipt,
    seal,
    sign_bundle,
    sign_document,
    verify_bundle,
)
from protocol._envelope import Header  # noqa: E402

VECTORS_FILE = Path(__file__).with_name("v1.json")
FORMAT = "prolink-test-vectors/1"
LABEL_PREFIX = b"prolink-test-vector-v1\x00"
TIME = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ENVELOPE_SIG_TYPE = "application/vnd.prolink.envelope.v1"
BODY_INFO_TYPE = "application/vnd.prolink.envelope-body.v1"

FIELDS = {
    "time": "the fixed 'now': envelopes were sealed at this time and must be opened with it",
    "key_derivation": "how each seed below was derived from its label (informative: the seeds are given)",
    "*_hex": "lower-case hexadecimal",
    "*_b64": "standard base64 (RFC 4648 section 4) with padding, of the exact bytes",
    "keys.*.seed_hex": "Ed25519 private key seed (32 bytes)",
    "keys.encryption.private_hex": "HPKE private key: X25519 scalar (32 bytes), or for the hybrid "
    "ML-KEM-768 seed d||z (64 bytes) followed by the X25519 scalar (32 bytes)",
    "keys.encryption.public_hex": "HPKE public key: X25519 (32 bytes), or ML-KEM-768 encapsulation key "
    "(1184 bytes) followed by X25519 (32 bytes)",
    "key_id": "first 16 bytes of SHA-256('prolink-key-v1' 0x00 alg 0x00 public), hex; alg is 'ed25519' "
    "or the suite name",
    "fingerprint": "root key fingerprint, 8 groups of 5 digits (see protocol/README.md)",
    "*_payload": "the DSSE payload of the statement next to it, decoded (for reading only)",
    "envelopes[].envelope_b64": "RECORDED (randomised encryption): must open with the recipient's keys "
    "at 'time'",
    "envelopes[].header": "the clear header bytes, as UTF-8 text",
    "envelopes[].hpke_info_hex": "HPKE info = PAE('application/vnd.prolink.envelope-body.v1', header)",
    "envelopes[].signature_input_hex": "what the node key signs: PAE('application/vnd.prolink.envelope.v1', "
    "header || SHA-256(payload section))",
    "envelopes[].signed_document_b64": "the person-signed document (DSSE) the envelope must carry",
    "envelopes[].attachments[]": "name, media type, size, SHA-256 and the plaintext each attachment "
    "must decrypt to",
    "receipts[]": "deterministic given the recorded envelope: receipt over its exact bytes",
}


def seed(label: str, n: int) -> bytes:
    return hashlib.shake_256(LABEL_PREFIX + label.encode()).digest(n)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# --- the fixed world --------------------------------------------------------------


@dataclass(frozen=True)
class VectorParty:
    code: str
    name: str
    suite: str
    root: SigningKey
    node: SigningKey
    retired_node: SigningKey | None
    signatory: SigningKey
    encryption: DecryptionKey
    bundle: bytes
    authorisation: bytes

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys(self.code, self.node, (self.encryption,))

    def trusted(self) -> TrustedParty:
        return verify_bundle(self.bundle, expected_fingerprint=fingerprint(self.root.public))


def _encryption_key(code: str, suite: str) -> DecryptionKey:
    x25519 = seed(f"{code}/encryption/x25519", 32)
    if suite == PQ_HYBRID:
        return DecryptionKey(suite, seed(f"{code}/encryption/ml-kem-768", 64) + x25519)
    return DecryptionKey(suite, x25519)


def make_party(
    code: str, name: str, suite: str, *, person: str, position: str, with_retired_key: bool
) -> VectorParty:
    root = SigningKey(seed(f"{code}/root", 32))
    node = SigningKey(seed(f"{code}/node", 32))
    retired = SigningKey(seed(f"{code}/node-2025", 32)) if with_retired_key else None
    signatory = SigningKey(seed(f"{code}/signatory", 32))
    encryption = _encryption_key(code, suite)
    signing_keys: list[tuple[Any, KeyValidity]] = []
    if retired is not None:
        signing_keys.append(
            (
                retired.public,
                KeyValidity(
                    retired.key_id, datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC)
                ),
            )
        )
    signing_keys.append(
        (
            node.public,
            KeyValidity(node.key_id, datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 12, 31, tzinfo=UTC)),
        )
    )
    contents = BundleContents(
        party=code,
        name=name,
        endpoint=f"https://prolink.{code.lower()}.example:8443",
        version=1,
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        root=root.public,
        signing_keys=tuple(signing_keys),
        encryption_keys=(
            (encryption.public, KeyValidity(encryption.key_id, datetime(2026, 1, 1, tzinfo=UTC), None)),
        ),
        tls_ca_pem="-----BEGIN CERTIFICATE-----\n"
        + b64(f"placeholder TLS CA of {code} (test vectors)".encode())
        + "\n-----END CERTIFICATE-----\n",
    )
    authorisation = issue_authorisation(
        Authorisation(
            party=code,
            person=person,
            position=position,
            key=signatory.public,
            valid_from=date(2026, 1, 1),
            valid_until=date(2026, 12, 31),
            issued_at=datetime(2025, 12, 20, 9, 0, tzinfo=UTC),
        ),
        root,
    )
    return VectorParty(
        code,
        name,
        suite,
        root,
        node,
        retired,
        signatory,
        encryption,
        sign_bundle(contents, root),
        authorisation,
    )


def world() -> tuple[VectorParty, VectorParty]:
    """KZ advertises plain X25519 and BY the post-quantum hybrid, so that both suites appear."""
    kz = make_party(
        "KZ",
        "Генеральная прокуратура Республики Казахстан",
        CLASSIC,
        person="Ахметов Ерлан Серикович",
        position="заместитель Генерального прокурора",
        with_retired_key=True,
    )
    by = make_party(
        "BY",
        "Генеральная прокуратура Республики Беларусь",
        PQ_HYBRID,
        person="Ковалёв Андрей Петрович",
        position="начальник управления международного сотрудничества",
        with_retired_key=False,
    )
    return kz, by


REQUEST_ID = "6f1d5c3a-2b7e-4c90-8a41-93e2d0f5b718"
RESULT_ID = "b2c4e6f8-1a3b-4d5e-8f70-9a1b2c3d4e5f"
REQUEST_ATTACHMENT = (
    "справка.txt",
    "text/plain",
    "Справка о регистрации ООО «Восток-Транзит», рег. № 123456789012.\n".encode(),
)
RESULT_ATTACHMENT = (
    "protocol-2026-118.txt",
    "text/plain",
    "Протокол допроса свидетеля Сидорова С.С. от 20.11.2026.\n".encode(),
)


def _ref(att: tuple[str, str, bytes]) -> dict[str, Any]:
    name, media_type, data = att
    return {
        "name": name,
        "media_type": media_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    request = {
        "kind": "request",
        "id": REQUEST_ID,
        "thread_id": REQUEST_ID,
        "in_reply_to": None,
        "sender_party": "KZ",
        "recipient_party": "BY",
        "created_at": "2026-11-25T11:00:00Z",
        "language": "ru",
        "confidentiality": "confidential",
        "requesting_party": "KZ",
        "requested_party": "BY",
        "grounds": "Уголовное дело № 2026-0415 по признакам преступления, предусмотренного статьёй 297 УК РК",
        "purpose": "Установление источника поставки наркотических средств",
        "content": "Просим предоставить сведения о регистрации ООО «Восток-Транзит» и о движении "
        "денежных средств по его счетам за 2025-2026 годы.",
        "expected_execution_date": "2026-12-25",
        "other_information": "Контактное лицо: старший прокурор Петров П.П., тел. +7 7172 71 00 00.",
        "direction": "drugs",
        "form": "crime_information",
        "urgent": False,
        "attachments": [_ref(REQUEST_ATTACHMENT)],
    }
    result = {
        "kind": "execution_result",
        "id": RESULT_ID,
        "thread_id": REQUEST_ID,
        "in_reply_to": REQUEST_ID,
        "sender_party": "BY",
        "recipient_party": "KZ",
        "created_at": "2026-11-25T11:30:00Z",
        "language": "ru",
        "confidentiality": "confidential",
        "purpose": "Установление источника поставки наркотических средств",
        "summary": "Запрошенные сведения собраны; протокол допроса свидетеля направляется в приложении.",
        "attachments": [_ref(RESULT_ATTACHMENT)],
    }
    return (document_to_json(parse_document(request)), document_to_json(parse_document(result)))


# --- building the vectors ------------------------------------------------------------


def _key(k: SigningKey) -> dict[str, str]:
    return {"seed_hex": k.seed.hex(), "public_hex": k.public.public.hex(), "key_id": k.key_id}


def _payload(statement: bytes) -> Any:
    return json.loads(Signed.from_bytes(statement, what="vector").payload)


def _party_json(p: VectorParty) -> dict[str, Any]:
    keys: dict[str, Any] = {"root": _key(p.root), "node": _key(p.node)}
    if p.retired_node is not None:
        keys["retired_node"] = _key(p.retired_node)
    keys["signatory"] = _key(p.signatory)
    keys["encryption"] = {
        "suite": p.suite,
        "private_hex": p.encryption.private.hex(),
        "public_hex": p.encryption.public.public.hex(),
        "key_id": p.encryption.key_id,
    }
    return {
        "keys": keys,
        "fingerprint": fingerprint(p.root.public),
        "bundle_b64": b64(p.bundle),
        "bundle_sha256": hashlib.sha256(p.bundle).hexdigest(),
        "bundle_payload": _payload(p.bundle),
        "authorisation_b64": b64(p.authorisation),
        "authorisation_payload": _payload(p.authorisation),
    }


def expected_header(sender: VectorParty, recipient: VectorParty, message_id: str) -> bytes:
    return Header(
        message_id,
        sender.code,
        recipient.code,
        TIME,
        sender.node.key_id,
        recipient.encryption.key_id,
        recipient.suite,
    ).to_bytes()


def _payload_section_sha256(envelope: bytes) -> bytes:
    framing = read_framing(envelope)
    return framing.payload_sha256


def build(recorded: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The whole vector file as a JSON object.

    ``recorded`` maps envelope ids to envelope bytes to reuse; missing ones are sealed afresh.
    """
    recorded = recorded or {}
    kz, by = world()
    request, result = documents()
    signed_request = sign_document(parse_document(request), kz.signatory)
    signed_result = sign_document(parse_document(result), by.signatory)
    assert kz.retired_node is not None
    revocation = issue_revocation(
        kz.retired_node.key_id, datetime(2026, 1, 15, tzinfo=UTC), "ключ выведен из эксплуатации", kz.root
    )

    envelopes = []
    receipts = []
    plan = [
        ("request-pq-hybrid", kz, by, request, signed_request, REQUEST_ATTACHMENT),
        ("result-classic", by, kz, result, signed_result, RESULT_ATTACHMENT),
    ]
    for env_id, sender, recipient, doc, signed, att in plan:
        envelope = recorded.get(env_id)
        if envelope is None:
            envelope = seal(signed, sender.authorisation, [att[2]], sender.keys, recipient.trusted(), TIME)
        header = expected_header(sender, recipient, doc["id"])
        envelopes.append(
            {
                "id": env_id,
                "suite": recipient.suite,
                "sender": sender.code,
                "recipient": recipient.code,
                "envelope_b64": b64(envelope),
                "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
                "header": header.decode("utf-8"),
                "hpke_info_hex": pae(BODY_INFO_TYPE, header).hex(),
                "signature_input_hex": pae(
                    ENVELOPE_SIG_TYPE, header + _payload_section_sha256(envelope)
                ).hex(),
                "signed_document_b64": b64(signed),
                "signed_document_payload": _payload(signed),
                "attachments": [{**_ref(att), "plaintext_hex": att[2].hex()}],
            }
        )
        rec = receipt(envelope, ACCEPTED, None, recipient.keys, TIME)
        receipts.append(
            {
                "envelope": env_id,
                "issuer": recipient.code,
                "receipt_b64": b64(rec),
                "receipt_payload": _payload(rec),
            }
        )

    return {
        "format": FORMAT,
        "description": "prolink protocol v1 test vectors: fixed test keys (never use them for anything "
        "else), fixed time. Regenerate and check with tests/vectors/generate.py; the wire "
        "format is described in protocol/README.md.",
        "fields": FIELDS,
        "time": ts(TIME),
        "key_derivation": "seed(label, n) = SHAKE-256('prolink-test-vector-v1' 0x00 label)[:n], labels "
        "'<party>/root', '<party>/node', '<party>/node-2025', '<party>/signatory', "
        "'<party>/encryption/x25519' (32), '<party>/encryption/ml-kem-768' (64)",
        "parties": {"KZ": _party_json(kz), "BY": _party_json(by)},
        "revocation": {
            "issuer": "KZ",
            "revoked_key": "KZ retired_node",
            "revocation_b64": b64(revocation),
            "revocation_payload": _payload(revocation),
        },
        "envelopes": envelopes,
        "receipts": receipts,
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, ensure_ascii=False, indent=2) + "\n"


def recorded_envelopes(vectors: dict[str, Any]) -> dict[str, bytes]:
    return {e["id"]: unb64(e["envelope_b64"]) for e in vectors.get("envelopes", [])}


def open_recorded(vectors: dict[str, Any], env: dict[str, Any]) -> Any:
    """Open one recorded envelope with the fixed keys at the fixed time (raises if it does not open)."""
    kz, by = world()
    parties = {"KZ": kz, "BY": by}
    me, sender = parties[env["recipient"]], parties[env["sender"]]
    return open(unb64(env["envelope_b64"]), me.keys, sender.trusted(), dt(vectors["time"]))


def _reusable(path: Path) -> dict[str, bytes]:
    """Envelopes already recorded in ``path`` that still open (so a rerun does not churn the file)."""
    if not path.exists():
        return {}
    vectors = json.loads(path.read_text(encoding="utf-8"))
    keep = {}
    for env in vectors.get("envelopes", []):
        try:
            open_recorded(vectors, env)
        except Exception:
            continue
        keep[env["id"]] = unb64(env["envelope_b64"])
    return keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    parser.add_argument("--new-envelopes", action="store_true", help="record new envelopes")
    parser.add_argument("--output", type=Path, default=VECTORS_FILE)
    args = parser.parse_args(argv)
    recorded = {} if args.new_envelopes else _reusable(args.output)
    text = render(build(recorded))
    if "PRIVATE KEY" in text:
        raise SystemExit("refusing to write a PEM private key block")
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} differs from what generate.py builds", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text)} characters; {len(recorded)} envelope(s) reused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

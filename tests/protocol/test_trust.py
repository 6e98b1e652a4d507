"""Trust: bundles and fingerprints, signing authorisations (Art. 4), revocations, key validity."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    CLASSIC,
    PQ_HYBRID,
    Authorisation,
    BundleContents,
    DecryptionKey,
    EncryptionKey,
    KeyValidity,
    ProlinkError,
    Revocation,
    Signed,
    SigningKey,
    TrustError,
    b64d,
    b64e,
    canonical_json,
    issue_revocation,
    key_id_for,
    normalise_fingerprint,
    sign_bundle,
    verify_authorisation,
    verify_bundle,
    verify_revocation,
)
from protocol._errors import EncodingError
from protocol._trust import BUNDLE_TYPE, format_time, parse_time, sign_statement
from tests.protocol.conftest import (
    AUTH_FROM,
    AUTH_UNTIL,
    KEYS_FROM,
    NOW,
    Party,
    make_authorisation,
    rebuild,
)


def code(exc: pytest.ExceptionInfo[ProlinkError]) -> str:
    return exc.value.code


def resign_payload(bundle: bytes, root: SigningKey, edit: object) -> bytes:
    """Decode a bundle, let ``edit`` change its payload object, sign it again with ``root``."""
    signed = Signed.from_bytes(bundle, what="test")
    obj = json.loads(signed.payload)
    edit(obj)  # type: ignore[operator]
    return sign_statement(BUNDLE_TYPE, obj, root).to_bytes()


# --- fingerprints and key ids --------------------------------------------------------


def test_fingerprint_is_eight_groups_of_five_digits(kz: Party) -> None:
    assert re.fullmatch(r"\d{5}( \d{5}){7}", kz.fingerprint)


def test_fingerprint_algorithm_is_as_documented(kz: Party) -> None:
    digest = hashlib.sha256(b"prolink-fingerprint-v1\x00" + kz.root.public.public).digest()
    groups = [int.from_bytes(digest[4 * i : 4 * i + 5], "big") % 100000 for i in range(8)]
    assert kz.fingerprint == " ".join(f"{g:05d}" for g in groups)


def test_fingerprints_differ_between_roots(kz: Party, by: Party) -> None:
    assert kz.fingerprint != by.fingerprint


@pytest.mark.parametrize(
    "spelling",
    [
        lambda f: f,
        lambda f: f.replace(" ", ""),
        lambda f: f.replace(" ", "-"),
        lambda f: "  " + f.replace(" ", " - ") + "\n",
        lambda f: " ".join(f.replace(" ", "")[i : i + 4] for i in range(0, 40, 4)),
    ],
)
def test_normalise_fingerprint_accepts_spaces_and_dashes(kz: Party, spelling: object) -> None:
    typed = spelling(kz.fingerprint)  # type: ignore[operator]
    assert normalise_fingerprint(typed) == kz.fingerprint
    assert verify_bundle(kz.bundle, expected_fingerprint=typed).party == "KZ"


def test_key_id_is_a_truncated_domain_separated_hash(kz: Party) -> None:
    public = kz.node.public.public
    expected = hashlib.sha256(b"prolink-key-v1\x00ed25519\x00" + public).digest()[:16].hex()
    assert kz.node.key_id == expected == key_id_for("ed25519", public)
    enc = kz.decryption.public
    assert (
        enc.key_id
        == hashlib.sha256(b"prolink-key-v1\x00" + enc.suite.encode() + b"\x00" + enc.public)
        .digest()[:16]
        .hex()
    )


def test_key_id_names_the_algorithm_too() -> None:
    assert key_id_for("ed25519", bytes(32)) != key_id_for(CLASSIC, bytes(32))


# --- bundles ------------------------------------------------------------------------


def test_bundle_verifies_against_the_fingerprint_typed_by_the_operator(kz: Party) -> None:
    trusted = verify_bundle(kz.bundle, expected_fingerprint=kz.fingerprint)
    assert trusted.party == "KZ"
    assert trusted.root == kz.root.public
    assert trusted.fingerprint == kz.fingerprint
    assert trusted.bundle == kz.contents
    assert trusted.raw == kz.bundle


def test_bundle_verifies_against_a_pinned_root(kz: Party) -> None:
    assert verify_bundle(kz.bundle, pinned_root=kz.root.public).party == "KZ"


def test_bundle_is_never_trusted_without_an_anchor(kz: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_bundle(kz.bundle)
    assert code(exc) == "trust.no_anchor"


def test_bundle_with_another_fingerprint_is_refused(kz: Party, by: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_bundle(kz.bundle, expected_fingerprint=by.fingerprint)
    assert code(exc) == "trust.fingerprint_mismatch"


def test_bundle_with_one_digit_of_the_fingerprint_wrong_is_refused(kz: Party) -> None:
    typed = kz.fingerprint[:-1] + str((int(kz.fingerprint[-1]) + 1) % 10)
    with pytest.raises(TrustError) as exc:
        verify_bundle(kz.bundle, expected_fingerprint=typed)
    assert code(exc) == "trust.fingerprint_mismatch"


def test_bundle_with_a_truncated_fingerprint_is_refused(kz: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_bundle(kz.bundle, expected_fingerprint=kz.fingerprint[:35])
    assert code(exc) == "trust.fingerprint_mismatch"


def test_bundle_of_another_root_is_refused_against_a_pinned_root(kz: Party, by: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_bundle(by.bundle, pinned_root=kz.root.public)
    assert code(exc) == "trust.fingerprint_mismatch"


def test_tampered_bundle_is_refused(kz: Party) -> None:
    signed = Signed.from_bytes(kz.bundle, what="test")
    obj = json.loads(signed.payload)
    obj["endpoint"] = "https://attacker.example"
    tampered = replace(signed, payload=canonical_json(obj)).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_bundle(tampered, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.bad_signature"


def test_bundle_with_a_node_key_slipped_in_is_refused(kz: Party) -> None:
    signed = Signed.from_bytes(kz.bundle, what="test")
    obj = json.loads(signed.payload)
    rogue = SigningKey.generate().public
    obj["signing_keys"].append(
        {
            "key_id": rogue.key_id,
            "alg": "ed25519",
            "public": b64e(rogue.public),
            "valid_from": "2026-01-01T00:00:00.000000Z",
            "valid_until": None,
        }
    )
    tampered = replace(signed, payload=canonical_json(obj)).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_bundle(tampered, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.bad_signature"


def test_bundle_signed_by_another_root_is_refused(kz: Party, by: Party) -> None:
    # KZ's contents (KZ's root key inside) signed by BY's root.
    foreign = sign_statement(BUNDLE_TYPE, kz.contents.to_json(), by.root).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_bundle(foreign, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.unknown_key"
    # ... and with the key id edited to look like KZ's root.
    forged = replace(Signed.from_bytes(foreign, what="t"), key_id=kz.root.key_id).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_bundle(forged, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.bad_signature"


def test_sign_bundle_refuses_a_root_that_is_not_the_bundles_own(kz: Party, by: Party) -> None:
    with pytest.raises(TrustError) as exc:
        sign_bundle(kz.contents, by.root)
    assert code(exc) == "trust.bad_bundle"


def test_bundle_with_the_wrong_payload_type_is_refused(kz: Party) -> None:
    wrong = sign_statement(
        "application/vnd.prolink.authorisation+json", kz.contents.to_json(), kz.root
    ).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_bundle(wrong, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.wrong_type"


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.update(format="prolink-bundle/2"),
        lambda o: o.pop("endpoint"),
        lambda o: o.update(version=0),
        lambda o: o.update(version=True),
        lambda o: o.update(version="1"),
        lambda o: o.update(signing_keys=[]),
        lambda o: o.update(encryption_keys=[]),
        lambda o: o["signing_keys"][0].update(key_id="00" * 16),
        lambda o: o["encryption_keys"][0].update(key_id="00" * 16),
        lambda o: o["encryption_keys"][0].update(suite="RSA"),
        lambda o: o["encryption_keys"][0].update(public=b64e(b"short")),
        lambda o: o["signing_keys"][0].update(valid_from="yesterday"),
        lambda o: o.update(revocations=[{"key_id": "x"}]),
        lambda o: o.update(tls_ca_pem=None),
    ],
)
def test_well_signed_but_malformed_bundle_is_refused_with_a_code(kz: Party, edit: object) -> None:
    with pytest.raises(ProlinkError) as exc:
        verify_bundle(resign_payload(kz.bundle, kz.root, edit), expected_fingerprint=kz.fingerprint)
    assert exc.value.code.startswith(("trust.", "envelope.", "encoding."))


@pytest.mark.parametrize("garbage", [b"", b"{}", b"[]", b"not json", b'{"payloadType":1}', b"\xfc"])
def test_garbage_is_not_a_bundle(kz: Party, garbage: bytes) -> None:
    with pytest.raises(TrustError) as exc:
        verify_bundle(garbage, expected_fingerprint=kz.fingerprint)
    assert code(exc) == "trust.bad_bundle"


def test_rollback_to_an_older_bundle_is_the_callers_job(kz: Party) -> None:
    """``verify_bundle`` checks signatures, not history: an older version still verifies,
    and exposes its version so that the caller (``keys``/the node) refuses to go back."""
    v2 = rebuild(kz, version=2)
    old = verify_bundle(kz.bundle, pinned_root=kz.root.public)
    new = verify_bundle(v2.bundle, pinned_root=kz.root.public)
    assert (old.bundle.version, new.bundle.version) == (1, 2)
    assert old.bundle.version < new.bundle.version


def test_bundle_advertises_the_suite(kz: Party) -> None:
    suites = [
        k.suite
        for k, _ in verify_bundle(kz.bundle, expected_fingerprint=kz.fingerprint).bundle.encryption_keys
    ]
    assert suites == [kz.suite]


def test_bundle_payload_is_canonical_json_and_signature_covers_pae(kz: Party) -> None:
    signed = Signed.from_bytes(kz.bundle, what="test")
    assert signed.payload == canonical_json(json.loads(signed.payload))
    assert signed.payload_type == "application/vnd.prolink.bundle+json"
    assert kz.root.public.verify(
        signed.signature,
        b"DSSEv1 35 application/vnd.prolink.bundle+json "
        + str(len(signed.payload)).encode()
        + b" "
        + signed.payload,
    )
    assert kz.bundle == canonical_json(signed.to_json())


# --- key validity and encryption key choice ----------------------------------------------


def test_signing_key_validity_window(kz: Party) -> None:
    party = rebuild(kz, node_valid_from=NOW, node_valid_until=NOW + timedelta(days=1)).trusted
    assert party.signing_key(kz.node.key_id, NOW) == kz.node.public
    with pytest.raises(TrustError) as exc:
        party.signing_key(kz.node.key_id, NOW - timedelta(microseconds=1))
    assert code(exc) == "trust.key_not_yet_valid"
    with pytest.raises(TrustError) as exc:
        party.signing_key(kz.node.key_id, NOW + timedelta(days=1))
    assert code(exc) == "trust.key_expired"


def test_unknown_signing_key(kz: Party) -> None:
    with pytest.raises(TrustError) as exc:
        kz.trusted.signing_key("00" * 16, NOW)
    assert code(exc) == "trust.unknown_key"


def test_encryption_key_is_the_newest_valid_one() -> None:
    old, new = DecryptionKey.generate(CLASSIC), DecryptionKey.generate(PQ_HYBRID)
    root = SigningKey.generate()
    node = SigningKey.generate()
    contents = BundleContents(
        "KZ",
        "КЗ",
        "https://kz",
        1,
        KEYS_FROM,
        root.public,
        ((node.public, KeyValidity(node.key_id, KEYS_FROM, None)),),
        (
            (old.public, KeyValidity(old.key_id, KEYS_FROM, NOW + timedelta(days=30))),
            (new.public, KeyValidity(new.key_id, NOW, None)),
        ),
        "PEM",
    )
    party = verify_bundle(sign_bundle(contents, root), pinned_root=root.public)
    assert party.encryption_key(NOW - timedelta(days=1)) == old.public
    assert party.encryption_key(NOW) == new.public
    revoked = replace(party, extra_revocations=(Revocation(new.key_id, NOW, "lost"),))
    assert revoked.encryption_key(NOW) == old.public
    with pytest.raises(TrustError) as exc:
        revoked.encryption_key(NOW + timedelta(days=31))
    assert code(exc) == "trust.no_valid_key"


# --- authorisations (Art. 4) ------------------------------------------------------------


def test_art4_authorisation_round_trip(kz: Party) -> None:
    auth = verify_authorisation(kz.authorisation, kz.trusted)
    assert auth.party == "KZ"
    assert auth.key == kz.signatory.public
    assert (auth.valid_from, auth.valid_until) == (AUTH_FROM, AUTH_UNTIL)
    assert auth.person == "Иванов Иван Иванович"
    assert auth.position == "заместитель Генерального прокурора"
    assert auth.issued_at == KEYS_FROM


def test_art4_authorisation_covers_its_period_inclusively(kz: Party) -> None:
    auth = verify_authorisation(kz.authorisation, kz.trusted)
    assert auth.covers(AUTH_FROM) and auth.covers(AUTH_UNTIL) and auth.covers(date(2026, 7, 1))
    assert not auth.covers(AUTH_FROM - timedelta(days=1))
    assert not auth.covers(AUTH_UNTIL + timedelta(days=1))


def test_art4_authorisation_cannot_end_before_it_starts(kz: Party) -> None:
    with pytest.raises(TrustError) as exc:
        make_authorisation(
            "KZ", kz.root, kz.signatory.public, valid_from=date(2026, 2, 1), valid_until=date(2026, 1, 31)
        )
    assert code(exc) == "trust.bad_authorisation"


def test_art4_authorisation_from_another_root_is_refused(kz: Party, by: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_authorisation(make_authorisation("KZ", by.root, kz.signatory.public), kz.trusted)
    assert code(exc) == "trust.unknown_key"


def test_art4_authorisation_for_another_party_is_refused(kz: Party, by: Party) -> None:
    """KZ's root may only authorise people to sign for KZ."""
    with pytest.raises(TrustError) as exc:
        verify_authorisation(make_authorisation("BY", kz.root, kz.signatory.public), kz.trusted)
    assert code(exc) == "trust.bad_authorisation"


def test_art4_tampered_authorisation_is_refused(kz: Party) -> None:
    signed = Signed.from_bytes(kz.authorisation, what="t")
    obj = json.loads(signed.payload)
    obj["valid_until"] = "2099-12-31"
    with pytest.raises(TrustError) as exc:
        verify_authorisation(replace(signed, payload=canonical_json(obj)).to_bytes(), kz.trusted)
    assert code(exc) == "trust.bad_authorisation"


def test_art4_authorisation_whose_key_id_does_not_match_its_key_is_refused(kz: Party) -> None:
    obj = Authorisation("KZ", "Иванов", "прокурор", kz.signatory.public, AUTH_FROM, AUTH_UNTIL, NOW).to_json()
    obj["key_id"] = SigningKey.generate().key_id
    forged = sign_statement("application/vnd.prolink.authorisation+json", obj, kz.root).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_authorisation(forged, kz.trusted)
    assert code(exc) == "trust.bad_authorisation"


@pytest.mark.parametrize(
    "garbage", [b"", b"{}", b"null", b'{"payload":"","payloadType":"x","signatures":[]}']
)
def test_art4_garbage_is_not_an_authorisation(kz: Party, garbage: bytes) -> None:
    with pytest.raises(TrustError) as exc:
        verify_authorisation(garbage, kz.trusted)
    assert code(exc) == "trust.bad_authorisation"


def test_art4_a_bundle_is_not_an_authorisation(kz: Party) -> None:
    with pytest.raises(TrustError) as exc:
        verify_authorisation(kz.bundle, kz.trusted)
    assert code(exc) == "trust.wrong_type"


# --- revocations ----------------------------------------------------------------------


def test_revocation_round_trip(kz: Party) -> None:
    data = issue_revocation(kz.node.key_id, NOW, "ключ скомпрометирован", kz.root)
    rev = verify_revocation(data, kz.trusted)
    assert rev == Revocation(kz.node.key_id, NOW, "ключ скомпрометирован")


def test_revocation_applies_from_its_time(kz: Party) -> None:
    party = kz.trusted.with_revocation(issue_revocation(kz.node.key_id, NOW, "compromised", kz.root))
    assert party.signing_key(kz.node.key_id, NOW - timedelta(microseconds=1)) == kz.node.public
    with pytest.raises(TrustError) as exc:
        party.signing_key(kz.node.key_id, NOW)
    assert code(exc) == "trust.key_revoked"
    assert kz.trusted.signing_key(kz.node.key_id, NOW) == kz.node.public  # immutability


def test_earliest_of_several_revocations_counts(kz: Party) -> None:
    party = kz.trusted
    for when in (NOW, NOW - timedelta(days=2), NOW + timedelta(days=2)):
        party = party.with_revocation(issue_revocation(kz.node.key_id, when, "r", kz.root))
    assert party.revocation_of(kz.node.key_id).revoked_at == NOW - timedelta(days=2)  # type: ignore[union-attr]


def test_revocation_in_the_bundle_itself(kz: Party) -> None:
    party = rebuild(kz, revocations=[Revocation(kz.node.key_id, NOW, "superseded")]).trusted
    with pytest.raises(TrustError) as exc:
        party.signing_key(kz.node.key_id, NOW + timedelta(seconds=1))
    assert code(exc) == "trust.key_revoked"


def test_revocation_signed_by_another_root_is_refused(kz: Party, by: Party) -> None:
    with pytest.raises(TrustError) as exc:
        kz.trusted.with_revocation(issue_revocation(kz.node.key_id, NOW, "x", by.root))
    assert code(exc) == "trust.unknown_key"


def test_tampered_revocation_is_refused(kz: Party) -> None:
    signed = Signed.from_bytes(issue_revocation(kz.node.key_id, NOW, "x", kz.root), what="t")
    obj = json.loads(signed.payload)
    obj["revoked_at"] = "2099-01-01T00:00:00.000000Z"
    with pytest.raises(TrustError) as exc:
        verify_revocation(replace(signed, payload=canonical_json(obj)).to_bytes(), kz.trusted)
    assert code(exc) == "trust.bad_signature"


@pytest.mark.parametrize(
    "payload",
    [
        {"key_id": 5, "revoked_at": "2026-11-25T12:00:00.000000Z", "reason": "x"},
        {"key_id": "k", "revoked_at": "2026-11-25", "reason": "x"},
        {"key_id": "k", "reason": "x"},
    ],
)
def test_malformed_revocation_is_refused(kz: Party, payload: dict[str, object]) -> None:
    data = sign_statement("application/vnd.prolink.revocation+json", payload, kz.root).to_bytes()
    with pytest.raises(TrustError) as exc:
        verify_revocation(data, kz.trusted)
    assert code(exc) == "trust.bad_revocation"


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [PQ_HYBRID, CLASSIC])
def test_decryption_key_round_trip_and_sizes(suite: str) -> None:
    key = DecryptionKey.generate(suite)
    again = DecryptionKey(suite, key.private)
    assert again.public == key.public
    assert len(key.public.public) == (1184 + 32 if suite == PQ_HYBRID else 32)
    assert again.open(key.public.seal(b"secret", b"info"), b"info") == b"secret"


def test_decryption_with_other_info_fails() -> None:
    key = DecryptionKey.generate(PQ_HYBRID)
    with pytest.raises(ProlinkError) as exc:
        key.open(key.public.seal(b"secret", b"info"), b"other")
    assert code(exc) == "envelope.decrypt_failed"


@pytest.mark.parametrize(
    "build",
    [
        lambda: SigningKey(bytes(31)),
        lambda: DecryptionKey(PQ_HYBRID, bytes(32)),
        lambda: DecryptionKey(CLASSIC, bytes(96)),
        lambda: EncryptionKey(PQ_HYBRID, bytes(100)),
        lambda: EncryptionKey(CLASSIC, bytes(33)),
    ],
)
def test_keys_of_the_wrong_size_are_refused(build: object) -> None:
    with pytest.raises(TrustError) as exc:
        build()  # type: ignore[operator]
    assert code(exc) == "trust.bad_key"


def test_unknown_suite_is_refused() -> None:
    with pytest.raises(ProlinkError) as exc:
        DecryptionKey.generate("ROT13")
    assert code(exc) == "envelope.unsupported_suite"


def test_b64_fields_in_bundle_are_strict(kz: Party) -> None:
    obj = json.loads(Signed.from_bytes(kz.bundle, what="t").payload)
    assert b64d(obj["root_key"]["public"], what="t") == kz.root.public.public


# --- timestamps ----------------------------------------------------------------------------------

_STAMP_PIECES = st.lists(
    st.sampled_from([*"0123456789-T:.Z ", "2026", "12", "31", "23", "59", "999999"]), max_size=14
).map("".join)


@given(
    st.one_of(
        _STAMP_PIECES,
        st.text(alphabet="0123456789-T:.Z", max_size=30),
        st.datetimes(timezones=st.just(UTC)).map(format_time),
    )
)
def test_parse_time_takes_exactly_what_strptime_took(text: str) -> None:
    """The hand-matched parser accepts what ``strptime("%Y-%m-%dT%H:%M:%S.%fZ")`` did (ASCII digits), and
    gives the same instant."""
    try:
        expected: datetime | None = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        expected = None
    try:
        got: datetime | None = parse_time(text, what="t")
    except EncodingError as exc:
        assert "t:" in exc.message
        got = None
    assert got == expected


def test_parse_time_round_trips_format_time_and_refuses_other_forms() -> None:
    t = datetime(2026, 11, 26, 4, 30, 5, 123456, tzinfo=UTC)
    assert parse_time(format_time(t), what="t") == t
    for bad in (
        "2026-11-26T04:30:05Z",
        "2026-11-26T04:30:05.123456+00:00",
        "2026-11-26 04:30:05.1Z",
        "2026-02-30T04:30:05.1Z",
        "2026-11-26T24:00:00.0Z",
        "\u0662026-11-26T04:30:05.1Z",
        5,
    ):
        with pytest.raises(EncodingError):
            parse_time(bad, what="t")

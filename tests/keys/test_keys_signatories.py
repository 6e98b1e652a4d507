"""Art. 4: signatories authorised by the Party's root key for a date range."""

from __future__ import annotations

import json
import os
import stat
from datetime import date, datetime
from pathlib import Path

import pytest

from keys import (
    Identity,
    IdentityError,
    KeyFileError,
    ScryptParams,
    add_signatory,
    export_bundle,
    generate_identity,
    import_bundle,
    list_signatories,
    load_signatory,
)
from protocol._errors import TrustError
from protocol._trust import verify_authorisation

CHEAP = ScryptParams(n=2**12)
FROM, UNTIL = date(2026, 3, 1), date(2026, 12, 31)


def test_art4_authorisation_verifies_for_the_peer(kz: Identity, kz_dir: Path, now: datetime) -> None:
    sig = add_signatory(kz_dir, "A. Prosecutor", "Deputy Prosecutor General", FROM, UNTIL, now, scrypt=CHEAP)
    peer_view = import_bundle(*export_bundle(kz_dir))  # what BY holds about KZ
    auth = verify_authorisation(sig.authorisation, peer_view)
    assert (auth.party, auth.person, auth.position) == ("KZ", "A. Prosecutor", "Deputy Prosecutor General")
    assert auth.key == sig.key.public
    assert (auth.valid_from, auth.valid_until) == (FROM, UNTIL)
    assert auth.issued_at == now
    assert auth.covers(FROM) and auth.covers(UNTIL) and auth.covers(date(2026, 7, 1))
    assert not auth.covers(date(2026, 2, 28)) and not auth.covers(date(2027, 1, 1))


def test_files_and_modes(kz: Identity, kz_dir: Path, now: datetime) -> None:
    sig = add_signatory(kz_dir, "A. Prosecutor", "Prosecutor", FROM, UNTIL, now, scrypt=CHEAP)
    sd = kz_dir / "keys" / "signatories"
    assert stat.S_IMODE(os.stat(sd / f"{sig.key_id}.key").st_mode) == 0o600
    assert (sd / f"{sig.key_id}.auth").read_bytes() == sig.authorisation


def test_load_and_list(kz: Identity, kz_dir: Path, now: datetime) -> None:
    a = add_signatory(kz_dir, "A. Prosecutor", "Prosecutor", FROM, UNTIL, now, scrypt=CHEAP)
    b = add_signatory(
        kz_dir, "B. Investigator", "Senior Prosecutor", date(2026, 1, 1), UNTIL, now, scrypt=CHEAP
    )
    loaded = load_signatory(kz_dir, a.key_id)
    assert loaded == a
    assert [x.key.key_id for x in list_signatories(kz_dir)] == [b.key_id, a.key_id]


def test_authorisation_of_another_party_does_not_verify(
    kz: Identity, by: Identity, kz_dir: Path, now: datetime
) -> None:
    sig = add_signatory(kz_dir, "A. Prosecutor", "Prosecutor", FROM, UNTIL, now, scrypt=CHEAP)
    with pytest.raises(TrustError):
        verify_authorisation(sig.authorisation, by.trusted_self())


def test_inverted_dates_are_refused(kz: Identity, kz_dir: Path, now: datetime) -> None:
    with pytest.raises(TrustError) as exc:
        add_signatory(kz_dir, "A", "B", UNTIL, FROM, now, scrypt=CHEAP)
    assert exc.value.code == "trust.bad_authorisation"
    assert list_signatories(kz_dir) == []


def test_unknown_signatory(kz: Identity, kz_dir: Path) -> None:
    for key_id in ("0" * 32, "../identity"):
        with pytest.raises(IdentityError) as exc:
            load_signatory(kz_dir, key_id)
        assert exc.value.code == "keys.unknown_signatory"


def test_tampered_authorisation_is_refused(kz: Identity, kz_dir: Path, now: datetime) -> None:
    sig = add_signatory(kz_dir, "A. Prosecutor", "Prosecutor", FROM, UNTIL, now, scrypt=CHEAP)
    path = kz_dir / "keys" / "signatories" / f"{sig.key_id}.auth"
    obj = json.loads(path.read_bytes())
    obj["signatures"][0]["sig"] = obj["signatures"][0]["sig"][::-1]
    path.write_text(json.dumps(obj))
    with pytest.raises(TrustError):
        load_signatory(kz_dir, sig.key_id)


def test_passphrase(tmp_path: Path, now: datetime) -> None:
    d = tmp_path / "kz"
    generate_identity(d, "KZ", "KZ", "https://kz.example", now, passphrase="pw", scrypt=CHEAP)
    with pytest.raises(KeyFileError) as exc:
        add_signatory(d, "A", "B", FROM, UNTIL, now, scrypt=CHEAP)  # the root key is locked
    assert exc.value.code == "keys.passphrase_required"
    sig = add_signatory(d, "A", "B", FROM, UNTIL, now, "pw", scrypt=CHEAP)
    with pytest.raises(KeyFileError) as exc:
        load_signatory(d, sig.key_id, "wrong")
    assert exc.value.code == "keys.wrong_passphrase"
    assert load_signatory(d, sig.key_id, "pw").key == sig.key

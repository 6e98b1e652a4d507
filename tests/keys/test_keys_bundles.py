"""Bundle export and import: the fingerprint read out of band is the only anchor."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from keys import Identity, ScryptParams, export_bundle, import_bundle, import_bundle_update, rotate_node_keys
from protocol._errors import TrustError

CHEAP = ScryptParams(n=2**12)


def test_export_import_round_trip(kz: Identity, kz_dir: Path) -> None:
    data, fp = export_bundle(kz_dir)
    assert data == kz.bundle_bytes()
    assert fp == kz.fingerprint
    assert len(fp.split()) == 8
    peer = import_bundle(data, fp)
    assert peer.party == "KZ"
    assert peer.raw == data
    assert peer.bundle.endpoint == "https://kz.prolink.example:8443"


def test_fingerprint_typed_loosely_still_matches(kz: Identity, kz_dir: Path) -> None:
    data, fp = export_bundle(kz_dir)
    assert import_bundle(data, fp.replace(" ", "")).party == "KZ"
    assert import_bundle(data, "-".join(fp.split())).party == "KZ"


@pytest.mark.parametrize("wrong", ["", "00000 " * 8, "other"])
def test_fingerprint_mismatch(kz: Identity, kz_dir: Path, wrong: str) -> None:
    data, _ = export_bundle(kz_dir)
    with pytest.raises(TrustError) as exc:
        import_bundle(data, wrong)
    assert exc.value.code == "trust.fingerprint_mismatch"


def test_another_partys_fingerprint_does_not_fit(kz: Identity, by: Identity, kz_dir: Path) -> None:
    data, _ = export_bundle(kz_dir)
    with pytest.raises(TrustError) as exc:
        import_bundle(data, by.fingerprint)
    assert exc.value.code == "trust.fingerprint_mismatch"


def test_expected_party(kz: Identity, kz_dir: Path) -> None:
    data, fp = export_bundle(kz_dir)
    with pytest.raises(TrustError) as exc:
        import_bundle(data, fp, party="BY")
    assert exc.value.code == "trust.wrong_party"


def test_tampered_bundle_is_refused(kz: Identity, kz_dir: Path) -> None:
    data, fp = export_bundle(kz_dir)
    tampered = data.replace(b'"signatures":[{"keyid":"', b'"signatures":[{"keyid":"0')
    with pytest.raises(TrustError):
        import_bundle(tampered, fp)


def test_update_and_rollback(kz: Identity, kz_dir: Path, now: datetime) -> None:
    v1, fp = export_bundle(kz_dir)
    peer_v1 = import_bundle(v1, fp)
    v2 = rotate_node_keys(kz_dir, now + timedelta(days=30), timedelta(days=7), scrypt=CHEAP)
    peer_v2 = import_bundle_update(v2, peer_v1)
    assert peer_v2.bundle.version == 2
    assert import_bundle_update(v2, peer_v2) is peer_v2  # refetching the same bytes is harmless
    with pytest.raises(TrustError) as exc:
        import_bundle_update(v1, peer_v2)
    assert exc.value.code == "trust.bundle_rollback"


def test_update_from_another_root_is_refused(kz: Identity, by: Identity, kz_dir: Path) -> None:
    peer = import_bundle(*export_bundle(kz_dir))
    with pytest.raises(TrustError) as exc:
        import_bundle_update(by.bundle_bytes(), peer)
    assert exc.value.code == "trust.fingerprint_mismatch"

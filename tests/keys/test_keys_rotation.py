"""Rotation (overlap) and revocation, seen through the peer's eyes."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from keys import (
    Identity,
    IdentityError,
    ScryptParams,
    add_signatory,
    export_bundle,
    import_bundle,
    import_bundle_update,
    issued_revocations,
    load_identity,
    revoke_key,
    rotate_node_keys,
)
from protocol._errors import TrustError
from protocol._trust import verify_revocation

CHEAP = ScryptParams(n=2**12)
SECOND = timedelta(seconds=1)


def test_rotation_keeps_old_keys_valid_until_the_overlap_ends(
    kz: Identity, kz_dir: Path, now: datetime
) -> None:
    peer = import_bundle(*export_bundle(kz_dir))
    old_sig, old_enc = kz.node_keys.signing, kz.node_keys.decryption[0]
    t, overlap = now + timedelta(days=100), timedelta(days=14)
    new_bundle = rotate_node_keys(kz_dir, t, overlap, scrypt=CHEAP)

    peer2 = import_bundle_update(new_bundle, peer)  # verifies against the pinned root
    assert peer2.bundle.version == 2
    assert peer2.root == peer.root

    after = load_identity(kz_dir)
    new_sig, new_enc = after.node_keys.signing, after.node_keys.decryption[0]
    assert new_sig != old_sig and new_enc != old_enc
    assert after.node_keys.decryption == (new_enc, old_enc)  # newest first
    assert after.bundle_bytes() == new_bundle

    # old signing key: still good inside the overlap, expired at its end
    assert peer2.signing_key(old_sig.key_id, t + overlap - SECOND) == old_sig.public
    with pytest.raises(TrustError) as exc:
        peer2.signing_key(old_sig.key_id, t + overlap)
    assert exc.value.code == "trust.key_expired"
    assert peer2.signing_key(new_sig.key_id, t) == new_sig.public
    with pytest.raises(TrustError) as exc:
        peer2.signing_key(new_sig.key_id, t - SECOND)
    assert exc.value.code == "trust.key_not_yet_valid"

    # senders switch to the new encryption key at once; the old one still opens in-flight mail
    assert peer2.encryption_key(t) == new_enc.public
    assert after.node_keys.decryption_key(old_enc.key_id) == old_enc

    # once the overlap is over the old decryption key is no longer loaded for a given now
    assert load_identity(kz_dir, now=t + overlap).node_keys.decryption == (new_enc,)
    # the TLS certificate is unchanged
    assert after.tls_cert_path.read_bytes() == kz.tls_cert_path.read_bytes()


def test_rotating_twice(kz: Identity, kz_dir: Path, now: datetime) -> None:
    peer = import_bundle(*export_bundle(kz_dir))
    v2 = rotate_node_keys(kz_dir, now + timedelta(days=1), timedelta(days=1), scrypt=CHEAP)
    v3 = rotate_node_keys(kz_dir, now + timedelta(days=2), timedelta(days=1), scrypt=CHEAP)
    peer3 = import_bundle_update(v3, import_bundle_update(v2, peer))
    assert peer3.bundle.version == 3
    assert len(peer3.bundle.signing_keys) == 3
    with pytest.raises(TrustError) as exc:
        import_bundle_update(v2, peer3)
    assert exc.value.code == "trust.bundle_rollback"
    meta = json.loads((kz_dir / "keys" / "identity.json").read_text())
    assert meta["bundle_version"] == 3
    # the first key's end was not pushed later by the second rotation
    first = meta["signing_keys"][-1]
    assert first["valid_until"] == "2026-03-03T09:00:00.000000Z"


def test_rotation_needs_the_root_key(kz: Identity, kz_dir: Path, now: datetime, tmp_path: Path) -> None:
    (kz_dir / "keys" / "root.key").rename(tmp_path / "offline.key")
    with pytest.raises(IdentityError) as exc:
        rotate_node_keys(kz_dir, now, timedelta(days=1), scrypt=CHEAP)
    assert exc.value.code == "keys.root_offline"


def test_the_current_signing_key_cannot_be_revoked(kz: Identity, kz_dir: Path, now: datetime) -> None:
    for key in (kz.node_keys.signing, kz.node_keys.decryption[0]):
        with pytest.raises(IdentityError) as exc:
            revoke_key(kz_dir, key.key_id, "compromised", now)
        assert exc.value.code == "keys.current_key"
    assert kz.trusted_self().bundle.version == 1


def test_revocation_is_honoured_by_the_peer(kz: Identity, kz_dir: Path, now: datetime) -> None:
    peer = import_bundle(*export_bundle(kz_dir))
    old = kz.node_keys.signing
    t = now + timedelta(days=10)
    rotate_node_keys(kz_dir, t, timedelta(days=30), scrypt=CHEAP)
    revoked_at = t + timedelta(hours=2)
    signed = revoke_key(kz_dir, old.key_id, "laptop stolen", revoked_at)

    # path 1: the new bundle version carries the revocation
    bundle_v3, _ = export_bundle(kz_dir)
    peer3 = import_bundle_update(bundle_v3, peer)
    assert peer3.bundle.version == 3
    assert peer3.signing_key(old.key_id, revoked_at - SECOND) == old.public  # signed before: still good
    with pytest.raises(TrustError) as exc:
        peer3.signing_key(old.key_id, revoked_at)  # signed at or after: rejected
    assert exc.value.code == "trust.key_revoked"

    # path 2: the signed revocation alone, applied to the bundle the peer already has
    peer_rev = peer.with_revocation(signed)
    with pytest.raises(TrustError) as exc:
        peer_rev.signing_key(old.key_id, revoked_at + SECOND)
    assert exc.value.code == "trust.key_revoked"
    # and it survives the next bundle update
    assert import_bundle_update(bundle_v3, peer_rev).extra_revocations == peer_rev.extra_revocations

    rev = verify_revocation(signed, peer)
    assert (rev.key_id, rev.revoked_at, rev.reason) == (old.key_id, revoked_at, "laptop stolen")
    assert issued_revocations(kz_dir) == [signed]
    meta = json.loads((kz_dir / "keys" / "identity.json").read_text())
    [entry] = meta["revocations"]
    assert base64.urlsafe_b64decode(entry["signed"] + "==") == signed

    # the node itself never signs with the revoked key
    assert load_identity(kz_dir).node_keys.signing.key_id != old.key_id


def test_revoking_a_signatory(kz: Identity, kz_dir: Path, now: datetime) -> None:
    sig = add_signatory(
        kz_dir, "A. Prosecutor", "Prosecutor", date(2026, 1, 1), date(2026, 12, 31), now, scrypt=CHEAP
    )
    at = now + timedelta(days=3)
    revoke_key(kz_dir, sig.key_id, "left office", at)
    peer = import_bundle(*export_bundle(kz_dir))
    peer.check_not_revoked(sig.key_id, at - SECOND, what="signatory key")
    with pytest.raises(TrustError) as exc:
        peer.check_not_revoked(sig.key_id, at, what="signatory key")
    assert exc.value.code == "trust.key_revoked"


def test_revocation_refusals(kz: Identity, kz_dir: Path, now: datetime) -> None:
    with pytest.raises(IdentityError) as exc:
        revoke_key(kz_dir, "0" * 32, "why", now)
    assert exc.value.code == "keys.unknown_key"
    with pytest.raises(IdentityError) as exc:
        revoke_key(kz_dir, kz.root_public.key_id, "root", now)
    assert exc.value.code == "keys.unknown_key"
    old = kz.node_keys.signing.key_id
    rotate_node_keys(kz_dir, now, timedelta(days=1), scrypt=CHEAP)
    revoke_key(kz_dir, old, "compromised", now)
    with pytest.raises(IdentityError) as exc:
        revoke_key(kz_dir, old, "again", now)
    assert exc.value.code == "keys.already_revoked"


def test_backdated_revocation(kz: Identity, kz_dir: Path, now: datetime) -> None:
    old = kz.node_keys.signing.key_id
    t = now + timedelta(days=5)
    rotate_node_keys(kz_dir, t, timedelta(days=30), scrypt=CHEAP)
    compromised_since = t - timedelta(days=2)
    revoke_key(
        kz_dir, old, "key found on a leaked backup", t + timedelta(days=1), revoked_at=compromised_since
    )
    peer = import_bundle(*export_bundle(kz_dir))
    with pytest.raises(TrustError) as exc:
        peer.signing_key(old, compromised_since + SECOND)
    assert exc.value.code == "trust.key_revoked"
    with pytest.raises(ValueError):
        revoke_key(kz_dir, kz.node_keys.decryption[0].key_id, "future", now, revoked_at=now + SECOND)


def test_art4_a_signatory_revoked_by_the_cli_is_refused_by_the_running_identity_at_once(
    kz: Identity, kz_dir: Path, now: datetime
) -> None:
    """The running node's view of its own bundle (``trusted_self``, asked on every send) follows each write
    of bundle.json, however soon after the last it comes."""
    sig = add_signatory(
        kz_dir, "A. Prosecutor", "Prosecutor", date(2026, 1, 1), date(2026, 12, 31), now, scrypt=CHEAP
    )
    at = now + timedelta(days=3)
    before = kz.trusted_self()
    assert kz.trusted_self() is before  # unchanged file: the verified bundle is reused
    before.check_not_revoked(sig.key_id, at, what="signatory key")
    revoke_key(kz_dir, sig.key_id, "left office", at)  # as `prolink keys revoke` does, beside the node
    with pytest.raises(TrustError) as exc:
        kz.trusted_self().check_not_revoked(sig.key_id, at, what="signatory key")
    assert exc.value.code == "trust.key_revoked"

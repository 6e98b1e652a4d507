"""Export and offline verification; tampering: every change to the log or an export is caught and named.

KZ logs events over several signed heads, BY cosigns them; KZ exports (JSON
Lines or CSV, whole or a time range) and ``verify`` checks the export with the
two public bundles alone. Then the database or the export is tampered with in
each way an insider might (change, delete, reorder or insert one entry;
truncate and append different entries; edit a CSV column, a head, a proof),
and ``verify`` must fail with a message naming what failed.
"""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

import protocol
from protocol import ExportFailure
from service.audit_export import export_to, load_bundle, verify_file
from service.cli import app
from service.db import session_scope
from service.models import Event
from service.node import Node
from tests.audit.conftest import cosign, introduce, log_events, sign
from tests.audit.test_witness import rewrite_history

T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def logged(request: pytest.FixtureRequest, make_node, tmp_path: Path):  # type: ignore[no-untyped-def]
    """KZ with 30 events over three cosigned heads (sizes 11, 21, 31), and both bundles on disk."""
    kz, by = make_node("KZ", request.param), make_node("BY", request.param)
    clock = [T0]
    kz.clock = by.clock = lambda: clock[0]
    introduce(kz, by)
    for batch in range(3):
        clock[0] = T0 + timedelta(hours=batch, minutes=1)
        log_events(kz, 10, start=batch * 10)
        sign(kz)
        assert cosign(by, kz)["status"] == 200
    for node in (kz, by):
        (tmp_path / f"{node.party}.json").write_bytes(node.identity.bundle_bytes())
    clock[0] = T0 + timedelta(hours=3)
    return kz, by


def bundles(tmp_path: Path) -> dict[str, protocol.TrustedParty]:
    return {p: load_bundle(tmp_path / f"{p}.json") for p in ("KZ", "BY")}


def export(node: Node, path: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    with path.open("wb") as out:
        export_to(node, out, actor="test", **kwargs)
    return path


def failure(path: Path, tmp_path: Path) -> ExportFailure:
    with pytest.raises(ExportFailure) as err:
        verify_file(path, bundles(tmp_path))
    return err.value


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write(path: Path, rows: list[bytes]) -> Path:
    path.write_bytes(b"".join(r + b"\n" for r in rows))
    return path


def entry_index(rows: list[bytes], seq: int) -> int:
    return next(
        i for i, r in enumerate(rows) if not r.startswith(b'{"record":') and json.loads(r)["seq"] == seq
    )


# --- intact exports ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_whole_log_export_verifies_offline_and_names_its_heads(logged, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    path = export(kz, tmp_path / f"kz.{fmt}", fmt=fmt)
    report = verify_file(path, bundles(tmp_path))
    # 31 entries when the heads were cosigned; the export records itself and signs head 32.
    assert report.count == 32 and report.first_seq == 0 and report.head.size == 32
    assert [h.size for h in report.checkpoints] == [11, 21, 31]
    assert all(h.cosigned_by and h.cosigned_by[0][0] == "BY" for h in report.checkpoints)
    assert [h.size for h in report.cosigned] == [31]
    summary = report.summary()
    assert "INTACT: 32 entries (seq 0..31) of log prolink.kz/audit" in summary
    assert "largest cosigned size is 31 (by BY" in summary


def test_the_cli_exports_and_verifies(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, by = logged
    runner = CliRunner()
    out = tmp_path / "kz.jsonl"
    kz.engine.dispose()
    r = runner.invoke(app, ["audit", "export", "--data-dir", str(kz.settings.data_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "audit",
            "verify",
            str(out),
            "--bundle",
            str(tmp_path / "KZ.json"),
            "--bundle",
            str(tmp_path / "BY.json"),
            "--fingerprint",
            f"BY={by.identity.fingerprint}",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "INTACT" in r.output and "(by BY at" in r.output
    witnessed = tmp_path / "kz-head-held-by-by.txt"
    r = runner.invoke(
        app,
        [
            "audit",
            "witnessed",
            "--data-dir",
            str(by.settings.data_dir),
            "--party",
            "KZ",
            "-o",
            str(witnessed),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "audit",
            "verify",
            str(out),
            "--bundle",
            str(tmp_path / "KZ.json"),
            "--bundle",
            str(tmp_path / "BY.json"),
            "--head",
            str(witnessed),
        ],
    )
    assert r.exit_code == 0 and "supplied head of size 31" in r.output, r.output
    r = runner.invoke(
        app,
        [
            "audit",
            "verify",
            str(out),
            "--bundle",
            str(tmp_path / "KZ.json"),
            "--fingerprint",
            "KZ=00000 11111 22222 33333 44444 55555 66666 77777",
        ],
    )
    assert r.exit_code == 1 and "fingerprint" in r.output


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_time_range_export_verifies_without_the_other_entries(logged, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    path = export(
        kz,
        tmp_path / f"range.{fmt}",
        fmt=fmt,
        start=T0 + timedelta(minutes=30),
        end=T0 + timedelta(hours=1, minutes=30),
    )
    report = verify_file(path, bundles(tmp_path))
    assert (report.first_seq, report.count) == (11, 10)  # the second batch of events
    assert [h.size for h in report.checkpoints] == [11, 21]  # the head at the start checks the left edge


def test_export_memory_does_not_grow_with_the_log(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service import audit

    kz = make_node("KZ")
    with kz.engine.begin() as conn:
        for start in range(0, 20_000, 5_000):
            audit.append_rows(
                conn,
                [
                    audit.NewEntry(
                        T0,
                        "node",
                        "BY",
                        "message.received",
                        f"m-{i}",
                        "accepted",
                        {"envelope_sha256": f"{i:064x}"},
                    )
                    for i in range(start, start + 5_000)
                ],
            )
    sign(kz)
    tracemalloc.start()
    path = export(kz, tmp_path / "big.jsonl")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert path.stat().st_size > 4 * 1024 * 1024
    assert peak < 16 * 1024 * 1024, f"export peaked at {peak} bytes"
    kz_bundle = tmp_path / "KZ.json"
    kz_bundle.write_bytes(kz.identity.bundle_bytes())
    assert verify_file(path, {"KZ": load_bundle(kz_bundle)}).count == 20_001  # and the export itself


# --- tampering with an export -----------------------------------------------------------


def test_changing_one_exported_entry_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    path = export(kz, tmp_path / "kz.jsonl")
    rows = lines(path)
    i = entry_index(rows, 14)
    rows[i] = rows[i].replace(b'"outcome":"accepted"', b'"outcome":"rejected"')
    err = failure(write(path, rows), tmp_path)
    assert err.code == "audit.entry_mismatch"
    assert "entries seq 11..20 do not match the head of size 21" in err.message
    assert "cosigned by BY" in err.message
    assert "content of at least one of them was altered" in err.message


def test_deleting_one_exported_entry_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    rows = lines(export(kz, tmp_path / "kz.jsonl"))
    del rows[entry_index(rows, 5)]
    err = failure(write(tmp_path / "kz.jsonl", rows), tmp_path)
    assert err.code == "audit.entry_missing"
    assert "entry seq 5 is missing (deleted)" in err.message


def test_reordering_two_exported_entries_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    rows = lines(export(kz, tmp_path / "kz.jsonl"))
    a, b = entry_index(rows, 23), entry_index(rows, 24)
    rows[a], rows[b] = rows[b], rows[a]
    err = failure(write(tmp_path / "kz.jsonl", rows), tmp_path)
    assert "entries were reordered" in err.message and "seq 24 where seq 23 belongs" in err.message


def test_inserting_one_exported_entry_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    rows = lines(export(kz, tmp_path / "kz.jsonl"))
    i = entry_index(rows, 2)
    rows.insert(i + 1, rows[i])
    err = failure(write(tmp_path / "kz.jsonl", rows), tmp_path)
    assert err.code == "audit.entry_inserted"
    assert "entry seq 2 appears more than once" in err.message


def test_truncating_an_export_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    rows = lines(export(kz, tmp_path / "kz.jsonl"))
    err = failure(write(tmp_path / "kz.jsonl", rows[: entry_index(rows, 26)]), tmp_path)
    assert "truncated" in err.message


def test_editing_a_head_or_a_proof_in_an_export_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    rows = lines(export(kz, tmp_path / "kz.jsonl"))
    heads = [i for i, r in enumerate(rows) if r.startswith(b'{"record":"checkpoint"')]
    forged = list(rows)
    forged[heads[1]] = forged[heads[1]].replace(b"\\n21\\n", b"\\n22\\n")
    err = failure(write(tmp_path / "a.jsonl", forged), tmp_path)
    assert "does not verify" in err.message and err.code == "audit.bad_signature"
    proof = list(rows)
    last = next(i for i, r in enumerate(rows) if r.startswith(b'{"record":"cosigned"'))
    obj = json.loads(proof[last])
    obj["proof"] = obj["proof"][:-1] if obj["proof"] else ["A" * 43 + "="]
    proof[last] = json.dumps(obj).encode()
    err = failure(write(tmp_path / "b.jsonl", proof), tmp_path)
    assert "is not consistent with the export's head" in err.message


def test_editing_a_readable_csv_column_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    path = export(kz, tmp_path / "kz.csv", fmt="csv")
    data = path.read_text(encoding="utf-8").replace(",msg-000007,accepted,", ",msg-000007,rejected,", 1)
    path.write_text(data, encoding="utf-8")
    err = failure(path, tmp_path)
    assert "column 'outcome' reads 'rejected' but the logged entry says 'accepted'" in err.message


def test_verify_needs_the_right_bundles(logged, tmp_path: Path, make_node) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    path = export(kz, tmp_path / "kz.jsonl")
    with pytest.raises(ExportFailure, match="no bundle of KZ"):
        verify_file(path, {"BY": load_bundle(tmp_path / "BY.json")})
    impostor = make_node("KZ")
    (tmp_path / "impostor.json").write_bytes(impostor.identity.bundle_bytes())
    with pytest.raises(protocol.LogError) as err:
        verify_file(path, {"KZ": load_bundle(tmp_path / "impostor.json")})
    assert err.value.code == "audit.unknown_key"


# --- tampering with the database ------------------------------------------------------------


def _sql(node: Node, statement: str, **params) -> None:  # type: ignore[no-untyped-def]
    with session_scope(node.engine) as s:
        s.execute(text(statement), params)


def _entry(node: Node, seq: int) -> bytes:
    with session_scope(node.engine, readonly=True) as s:
        return bytes(s.execute(select(Event.entry).where(Event.seq == seq)).scalar_one())


def test_changing_one_entry_in_the_database_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    forged = _entry(kz, 15).replace(b'"outcome":"accepted"', b'"outcome":"rejected"')
    leaf = protocol.leaf_hash(forged)  # a careful insider updates the leaf hash too
    with session_scope(kz.engine) as s:
        s.execute(
            update(Event).where(Event.seq == 15).values(entry=forged, leaf_hash=leaf, outcome="rejected")
        )
    err = failure(export(kz, tmp_path / "kz.jsonl"), tmp_path)
    assert "entries seq 11..20 do not match the head of size 21" in err.message
    assert "altered" in err.message


def test_deleting_one_entry_in_the_database_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    _sql(kz, "DELETE FROM event WHERE seq = 8")
    err = failure(export(kz, tmp_path / "kz.jsonl"), tmp_path)
    assert "entry seq 8 is missing (deleted)" in err.message


def test_reordering_entries_in_the_database_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    a, b = _entry(kz, 12), _entry(kz, 13)
    with session_scope(kz.engine) as s:
        s.execute(update(Event).where(Event.seq == 12).values(entry=b))
        s.execute(update(Event).where(Event.seq == 13).values(entry=a))
    err = failure(export(kz, tmp_path / "kz.jsonl"), tmp_path)
    assert "entries were reordered" in err.message


def rebuild_state(node: Node) -> None:
    """Recompute the log's size and compact range from the (tampered) leaves, as a careful insider would."""
    from service import audit
    from service.models import AuditState

    with session_scope(node.engine) as s:
        leaves = s.execute(select(Event.leaf_hash).order_by(Event.seq)).scalars().all()  # type: ignore[arg-type]
        cr = protocol.CompactRange()
        cr.extend(bytes(h) for h in leaves)
        s.execute(update(AuditState).values(size=cr.size, frontier=audit.pack(cr)))


def test_inserting_an_entry_in_the_database_is_detected(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, _ = logged
    # Shift everything from seq 3 up by one (top down, so the unique index holds) and slip an entry in.
    with session_scope(kz.engine, readonly=True) as s:
        seqs = sorted(s.execute(select(Event.seq).where(Event.seq >= 3)).scalars(), reverse=True)
    for seq in seqs:
        _sql(kz, "UPDATE event SET seq = seq + 1 WHERE seq = :s", s=seq)
    forged = protocol.entry_bytes(
        seq=3,
        at=T0,
        actor="user:1",
        party="BY",
        type="consent.granted",
        object_id="msg-000002",
        outcome="ok",
        detail={},
    )
    _sql(
        kz,
        "INSERT INTO event (at, actor, party, type, object_id, outcome, detail, seq, entry, leaf_hash) "
        "VALUES (:at, 'user:1', 'BY', 'consent.granted', 'msg-000002', 'ok', '{}', 3, :e, :h)",
        at=T0,
        e=forged,
        h=protocol.leaf_hash(forged),
    )
    rebuild_state(kz)  # so that the node goes on appending after the forged entry
    err = failure(export(kz, tmp_path / "kz.jsonl"), tmp_path)
    assert "appears more than once" in err.message or "inserted" in err.message


def test_truncating_and_rewriting_the_log_is_caught_by_verify_and_by_the_peer(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, by = logged
    rewrite_history(kz, keep=15, new_events=20)  # also deletes KZ's own heads and cosignatures above 15
    sign(kz)
    # The rewritten log verifies against KZ's own signature alone (KZ re-signed it)...
    path = export(kz, tmp_path / "kz.jsonl")
    # ...but the head BY holds (cosigned at size 31) contradicts it:
    from service.audit_witness import latest_accepted

    with session_scope(by.engine, readonly=True) as s:
        row = latest_accepted(s, "KZ")
        held = (
            protocol.parse_note(row.note.encode())
            .with_signatures(  # type: ignore[union-attr]
                [protocol.parse_signature_line(row.cosignature)]
            )
            .to_bytes()
        )  # type: ignore[union-attr]
    with pytest.raises(ExportFailure) as err:
        verify_file(path, bundles(tmp_path), [held])
    assert "do not match the supplied head of size 31" in err.value.message
    assert "cosigned by BY" in err.value.message
    # ...and BY refuses the rewritten head when KZ pushes it.
    answer = cosign(by, kz)
    assert answer["status"] == 409 and answer["error"]["code"] == "audit.inconsistent_head"


# --- one entry's proof (for a court: no export, no database, the bundles alone) -------------------


def test_an_entry_proof_verifies_offline_under_the_newest_cosigned_head(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.audit_export import entry_proof

    kz, _ = logged
    proof = entry_proof(kz, 7, actor="test")
    proven = protocol.verify_entry_proof(proof, bundles(tmp_path))
    assert proven.seq == proven.entry["seq"] == 7 and proven.entry["type"] == "message.received"
    assert proven.head.size == 31 and proven.head.cosigned_by[0][0] == "BY"
    assert "PROVEN: entry 7 of log prolink.kz/audit" in proven.summary()
    with session_scope(kz.engine, readonly=True) as s:  # asking for a proof is itself recorded
        assert (
            s.execute(select(Event).where(Event.type == "audit.proof_issued")).scalars().one().object_id
            == "7"
        )


def test_an_entry_newer_than_every_cosigned_head_is_proven_under_a_head_signed_now(
    logged, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from service.audit_export import entry_proof

    kz, _ = logged
    log_events(kz, 3, start=100)  # seq 31..33: no head covers them yet
    proven = protocol.verify_entry_proof(entry_proof(kz, 32, actor="test"), bundles(tmp_path))
    assert proven.seq == 32 and proven.head.size == 35 and proven.head.cosigned_by == ()


@pytest.mark.parametrize("change", ["entry", "seq", "path", "head", "party"])
def test_a_changed_entry_proof_is_refused_with_a_code(logged, tmp_path: Path, change: str) -> None:  # type: ignore[no-untyped-def]
    import base64

    from service.audit_export import entry_proof

    kz, _ = logged
    doc = json.loads(entry_proof(kz, 7, actor="test"))
    if change == "entry":
        entry = json.loads(base64.b64decode(doc["entry"]))
        entry["outcome"] = "rejected"
        doc["entry"] = base64.b64encode(protocol.canonical_json(entry)).decode()
    elif change == "seq":
        doc["seq"] = 8
    elif change == "path":
        doc["inclusion"][0] = base64.b64encode(bytes(32)).decode()
    elif change == "head":
        doc["checkpoint"] = doc["checkpoint"].replace("\n31\n", "\n30\n")
    else:
        doc["party"] = "BY"
    with pytest.raises(protocol.ProlinkError) as err:
        protocol.verify_entry_proof(json.dumps(doc).encode(), bundles(tmp_path))
    assert err.value.code.startswith("audit."), err.value.code


def test_the_cli_writes_and_verifies_an_entry_proof(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kz, by = logged
    runner = CliRunner()
    out = tmp_path / "entry-5.proof.json"
    kz.engine.dispose()
    r = runner.invoke(app, ["audit", "proof", "--data-dir", str(kz.settings.data_dir), "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "audit",
            "verify-proof",
            str(out),
            "--bundle",
            str(tmp_path / "KZ.json"),
            "--bundle",
            str(tmp_path / "BY.json"),
            "--fingerprint",
            f"BY={by.identity.fingerprint}",
        ],
    )
    assert r.exit_code == 0 and "PROVEN: entry 5" in r.output and "cosigned by BY" in r.output, r.output
    r = runner.invoke(
        app, ["audit", "proof", "--data-dir", str(kz.settings.data_dir), "9999", "-o", str(out)]
    )
    assert r.exit_code == 2 and "audit.no_such_entry" in r.output
    out.write_text(out.read_text().replace('"seq":5', '"seq":6'))
    r = runner.invoke(app, ["audit", "verify-proof", str(out), "--bundle", str(tmp_path / "KZ.json")])
    assert r.exit_code == 1 and "FAILED" in r.output


def test_the_api_gives_an_entry_proof_to_auditors_only(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from service.auth import create_user
    from service.user_api import create_user_app

    kz, _ = logged
    _, auditor = create_user(kz.engine, "auditor KZ", "auditor", T0)
    _, clerk = create_user(kz.engine, "clerk KZ", "clerk", T0)
    with TestClient(create_user_app(kz)) as c:
        ok = c.get("/v1/admin/audit/entries/3/proof", headers={"authorization": f"Bearer {auditor}"})
        assert ok.status_code == 200, ok.text
        assert protocol.verify_entry_proof(ok.content, bundles(tmp_path)).seq == 3
        assert (
            c.get("/v1/admin/audit/entries/3/proof", headers={"authorization": f"Bearer {clerk}"}).status_code
            == 403
        )
        assert c.get("/v1/admin/audit/entries/3/proof").status_code == 401
        missing = c.get("/v1/admin/audit/entries/9999/proof", headers={"authorization": f"Bearer {auditor}"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "audit.no_such_entry"

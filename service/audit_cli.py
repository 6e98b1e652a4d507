"""``prolink audit``: export the audit log, verify an export offline, show the heads a peer holds."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol import ProlinkError

audit_app = typer.Typer(
    help="The tamper-evident audit log: export and offline verification.", no_args_is_help=True
)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The node's data directory.")]
Bundles = Annotated[list[Path], typer.Option("--bundle", help="A Party's public bundle (one per Party).")]
Fingerprints = Annotated[
    list[str] | None,
    typer.Option("--fingerprint", help="PARTY=FINGERPRINT read out of band; the bundle must match it."),
]


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name}: not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@audit_app.command("export")
def export(
    data_dir: DataDir,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the export.")],
    start: Annotated[str | None, typer.Option("--from", help="First time (ISO 8601, default UTC).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last time (ISO 8601, UTC if no zone).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
) -> None:
    """Export the log (or a time range) with its signed and cosigned heads and proofs, streamed to a file."""
    from service.audit_export import FORMATS, export_to
    from service.server import build_node

    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
    node = build_node(data_dir)
    try:
        tmp = output.with_name(output.name + ".partial")
        with tmp.open("wb") as out:
            plan = export_to(
                node,
                out,
                actor=f"cli:{getpass.getuser()}",
                fmt=fmt,
                start=_time(start, "--from"),
                end=_time(end, "--to"),
            )
        tmp.replace(output)
    finally:
        node.engine.dispose()
    last = plan.first + plan.count - 1
    typer.echo(
        f"Exported {plan.count} entries (seq {plan.first}..{last}) of {node.party}'s audit log "
        f"to {output}; head size {plan.head.size}"
    )


@audit_app.command("verify")
def verify(
    export_file: Annotated[Path, typer.Argument(help="An export from 'prolink audit export' or the API.")],
    bundle: Bundles,
    fingerprint: Fingerprints = None,
    head: Annotated[
        list[Path] | None,
        typer.Option(
            "--head", help="A signed head obtained elsewhere (e.g. from the other Party); must match."
        ),
    ] = None,
) -> None:
    """Verify an export offline: recompute the tree, check every signature, cosignature and proof."""
    from service.audit_export import verify_file

    _report(
        export_file,
        lambda: verify_file(
            export_file, _bundles(bundle, fingerprint), [p.read_bytes() for p in head or []]
        ).summary(),
    )


def _report(path: Path, check: Callable[[], str]) -> None:
    """Print what ``check`` proved about ``path``, or why it failed (exit status 1)."""
    try:
        summary = check()
    except ProlinkError as exc:
        typer.echo(f"FAILED: {path} does not verify.", err=True)
        typer.echo(f"  [{exc.code}] {exc.message}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"FAILED: cannot read {exc.filename}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary)


def _bundles(paths: list[Path], fingerprints: list[str] | None) -> dict[str, Any]:
    """The Parties' bundles by code; those named in ``--fingerprint`` must match what was read out."""
    from service.audit_export import load_bundle

    expected: dict[str, str] = {}
    for item in fingerprints or []:
        party, _, fp = item.partition("=")
        if not fp:
            raise typer.BadParameter("--fingerprint takes PARTY=FINGERPRINT")
        expected[party.strip().upper()] = fp
    bundles = {}
    for path in paths:
        trusted = load_bundle(path)
        if trusted.party in expected:
            trusted = load_bundle(path, expected[trusted.party])
        bundles[trusted.party] = trusted
    missing = sorted(set(expected) - set(bundles))
    if missing:
        raise typer.BadParameter(f"no bundle given for {', '.join(missing)}")
    return bundles


@audit_app.command("proof")
def proof(
    data_dir: DataDir,
    seq: Annotated[int, typer.Argument(help="The entry's sequence number.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the proof.")],
) -> None:
    """Write a proof that one entry is in the log under a signed (cosigned when possible) head."""
    from service.audit_export import entry_proof
    from service.server import build_node

    node = build_node(data_dir)
    try:
        output.write_bytes(entry_proof(node, seq, actor=f"cli:{getpass.getuser()}"))
    finally:
        node.engine.dispose()
    typer.echo(f"Proof of entry {seq} of {node.party}'s audit log written to {output}")


@audit_app.command("verify-proof")
def verify_proof(
    proof_file: Annotated[Path, typer.Argument(help="A proof from 'prolink audit proof' or the API.")],
    bundle: Bundles,
    fingerprint: Fingerprints = None,
) -> None:
    """Verify, offline, that an entry is in a Party's log under the head it names."""
    import protocol

    _report(
        proof_file,
        lambda: protocol.verify_entry_proof(proof_file.read_bytes(), _bundles(bundle, fingerprint)).summary(),
    )


@audit_app.command("witnessed")
def witnessed(
    data_dir: DataDir,
    party: Annotated[str, typer.Option(help="The peer whose log this node witnesses.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the signed head.")],
) -> None:
    """Write the newest head of PARTY's log that this node cosigned (for 'audit verify --head')."""
    from protocol import parse_note, parse_signature_line
    from service.audit_witness import latest_accepted
    from service.db import make_engine, session_scope
    from service.settings import Settings

    engine = make_engine(Settings.load(data_dir).database_url)
    try:
        with session_scope(engine, readonly=True) as s:
            row = latest_accepted(s, party.upper())
            if row is None:
                raise ProlinkError(f"this node holds no head of {party}'s log", code="audit.no_head")
            note = parse_note(row.note.encode("utf-8"))
            note = note.with_signatures([parse_signature_line(row.cosignature)])
            output.write_bytes(note.to_bytes())
            typer.echo(
                f"{party.upper()}'s head of size {row.size}, cosigned by this node at "
                f"{row.accepted_at.isoformat()}, written to {output}"
            )
    finally:
        engine.dispose()

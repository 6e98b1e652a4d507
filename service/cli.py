"""The ``prolink`` command: set up a Party's node, exchange bundles, manage users, serve, demo."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer
from typer.core import TyperGroup

from protocol import ProlinkError
from service.audit_cli import audit_app


class RefusingGroup(TyperGroup):
    """The ``prolink`` command group: whatever a command refuses (a ``ProlinkError``: a data directory
    that holds no node, a broken ``node.json``, a peer's bad bundle...) or a named file that cannot be
    read or written ends as ``error: CODE: message`` and exit status 2, never a traceback. Other errors
    (a full disk, too many open files) keep theirs. The commands themselves catch nothing."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ProlinkError as exc:
            refuse(exc.code, exc.message)
        except OSError as exc:
            if exc.filename is None:
                raise
            refuse("io.failed", f"{exc.strerror or exc} ({exc.filename})")


def refuse(code: str, message: str) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(2)


app = typer.Typer(
    cls=RefusingGroup,
    help="prolink: signed, encrypted exchange between prosecutor's offices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bundle_app = typer.Typer(help="Export this Party's public bundle.", no_args_is_help=True)
peer_app = typer.Typer(help="Peers: the other Parties this node exchanges with.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the user and admin APIs.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
app.add_typer(peer_app, name="peer")
app.add_typer(user_app, name="user")
app.add_typer(audit_app, name="audit")

DataDir = Annotated[Path, typer.Option("--data-dir", help="The node's data directory.")]


def _now() -> datetime:
    return datetime.now(UTC)


@app.command()
def init(
    party: Annotated[str, typer.Option(help="Party code, e.g. KZ.")],
    name: Annotated[str, typer.Option(help="Party name, e.g. the office's full name.")],
    url: Annotated[str, typer.Option(help="https://HOST:PORT where peers reach this node.")],
    data_dir: DataDir,
    database_url: Annotated[str | None, typer.Option(help="Default: SQLite in the data directory.")] = None,
    user_port: Annotated[int, typer.Option(help="Port of the internal user/admin API.")] = 8080,
    listen_host: Annotated[
        str | None, typer.Option(help="Peer API bind address (default: URL host).")
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Name of an environment variable holding a passphrase to encrypt private keys."),
    ] = None,
) -> None:
    """Create the Party's keys, configuration and database."""
    from pydantic import ValidationError

    from keys import generate_identity
    from service.migrate import upgrade
    from service.settings import ConfigError, Settings, describe

    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else 443
    except ValueError:  # a port that is not a number or out of range, a broken [IPv6] host
        parts, port = None, 0
    if parts is None or parts.scheme != "https" or not parts.hostname or not 0 < port < 65536:
        raise ConfigError("--url must be https://HOST:PORT", code="config.invalid")
    try:
        settings = Settings(
            data_dir=data_dir,
            party=party,
            party_name=name,
            public_url=url,
            peer_host=listen_host or parts.hostname,
            peer_port=port,
            user_port=user_port,
            database_url=database_url or "",
            key_passphrase_env=passphrase_env,
        )
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    if (settings.data_dir / "node.json").exists():
        raise ConfigError(f"{settings.data_dir} already holds a node", code="config.exists")
    identity = generate_identity(
        settings.data_dir, party, name, url, _now(), passphrase=settings.key_passphrase()
    )
    settings.save()
    upgrade(settings.database_url)
    typer.echo(f"Party {party} initialised in {settings.data_dir}")
    typer.echo(f"Root key fingerprint: {identity.fingerprint}")


def _node(data_dir: Path):  # type: ignore[no-untyped-def]
    from service.server import build_node

    return build_node(data_dir)


@bundle_app.command("export")
def bundle_export(
    data_dir: DataDir,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the bundle.")],
) -> None:
    """Write this Party's signed public bundle and print its fingerprint (read it to the other Party)."""
    from keys import export_bundle
    from service.settings import Settings

    settings = Settings.load(data_dir)
    data, fingerprint = export_bundle(settings.data_dir)
    output.write_bytes(data)
    typer.echo(f"Bundle written to {output}")
    typer.echo(f"Fingerprint: {fingerprint}")


@peer_app.command("add")
def peer_add(
    data_dir: DataDir,
    bundle: Annotated[Path, typer.Argument(help="The peer's bundle file.")],
    fingerprint: Annotated[str, typer.Option(help="The fingerprint the other Party read to you.")],
) -> None:
    """Trust another Party's bundle after checking its fingerprint."""
    node = _node(data_dir)
    trusted = node.add_peer(bundle.read_bytes(), fingerprint)
    typer.echo(
        f"Peer {trusted.party} ({trusted.bundle.name}) added, endpoint {trusted.bundle.endpoint}, "
        f"bundle version {trusted.bundle.version}"
    )


@peer_app.command("list")
def peer_list(data_dir: DataDir) -> None:
    """List known peers."""
    from service.db import session_scope
    from service.models import Peer

    node = _node(data_dir)
    with session_scope(node.engine, readonly=True) as s:
        for p in s.query(Peer).order_by(Peer.party).all():
            typer.echo(f"{p.party}\t{p.status}\tv{p.bundle_version}\t{p.endpoint}\t{p.fingerprint}")


@user_app.command("add")
def user_add(
    data_dir: DataDir,
    name: Annotated[str, typer.Option(help="The person's name.")],
    role: Annotated[str, typer.Option(help="clerk|signatory|reader|operator|auditor")],
    clearance: Annotated[
        str, typer.Option(help="Highest confidentiality level the user may read.")
    ] = "unrestricted",
    position: Annotated[str, typer.Option(help="Signatory's position (Art. 4 authorisation).")] = "",
    valid_days: Annotated[
        int, typer.Option(min=1, max=3660, help="Signatory authorisation validity in days.")
    ] = 365,
) -> None:
    """Add a user and print their bearer token once (only its hash is stored).

    A signatory also gets a signing key and an authorisation signed by the
    Party's root key (Art. 4: "a person he authorised").
    """
    from keys import add_signatory
    from service import admin

    node = _node(data_dir)
    key_id = None
    admin.check_new_user(name, role, clearance)  # before a signing key is made for nothing
    if role == "signatory":
        today = _now().date()
        signatory = add_signatory(
            node.settings.data_dir,
            name,
            position or "уполномоченное лицо",
            today,
            today + timedelta(days=valid_days),
            _now(),
            passphrase=node.settings.key_passphrase(),
        )
        key_id = signatory.key.key_id
    # The admin API's own path: the same checks, and the audit log records who added the user.
    user, token = admin.add_user(node, name, role, clearance, admin.cli_actor(), key_id)
    typer.echo(f"User {user['id']} ({name}, {role}) created." + (f" Signing key {key_id}." if key_id else ""))
    typer.echo(f"Token (shown once): {token}")


@app.command()
def serve(data_dir: DataDir) -> None:
    """Run the node: peer API (mutual TLS), user API and delivery worker."""
    from service.logging import configure_logging
    from service.server import loop_factory
    from service.server import serve as run

    configure_logging()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop where installed
        runner.run(run(data_dir))


@app.command()
def demo(keep: Annotated[bool, typer.Option(help="Keep the temporary directory.")] = False) -> None:
    """Two Parties on loopback, a full signed and encrypted exchange, then a JSON summary."""
    from service.demo import run_demo

    sys.exit(run_demo(keep=keep))


from service.admin_cli import register as _register_admin_commands  # noqa: E402  (peer/keys/user/outbox admin)

_register_admin_commands(app, peer_app, user_app)

"""CLI twins of the main admin actions: ``prolink peer suspend/resume/update/show``, ``prolink keys
list/rotate/revoke``, ``prolink user list/disable/enable/role/rotate-token``, ``prolink outbox
list/show/retry/park/requeue``.

They work on the node's data directory and database directly (like ``peer add``
and ``user add``), through the same functions as the admin API, and are
audited the same way (actor ``cli:<login>``). A running node sees them within
seconds: peer facts are re-read, and after ``keys rotate`` or ``keys revoke`` its
key sync reloads the keys and sends the new bundle to the peers (the CLI itself
never pushes, so no peer learns a key the running node cannot use yet).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

DataDir = Annotated[Path, typer.Option("--data-dir", help="The node's data directory.")]
Passphrase = Annotated[
    str | None,
    typer.Option(
        "--passphrase",
        envvar="PROLINK_ROOT_PASSPHRASE",
        show_default=False,
        help="The root key's passphrase where it is encrypted (asked for if missing).",
    ),
]

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 7d, 12h, 30m or 45s")
    try:
        return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:
        raise typer.BadParameter(f"{text!r} is longer than any duration a key can have") from None


def _node(data_dir: Path) -> Any:
    from service.server import build_node

    return build_node(data_dir)


def _show(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _root_passphrase(node: Any, given: str | None) -> str | None:
    from service.admin import root_key_encrypted

    if given is None and root_key_encrypted(node.settings.data_dir):
        return str(typer.prompt("Root key passphrase", hide_input=True))
    return given


def register(app: typer.Typer, peer_app: typer.Typer, user_app: typer.Typer) -> None:
    """Add the admin commands to the ``prolink`` command (``peer`` and ``user`` exist already)."""
    from service import admin

    keys_app = typer.Typer(help="This node's keys: list, rotate, revoke.", no_args_is_help=True)
    outbox_app = typer.Typer(help="Outgoing deliveries: list, retry, park, requeue.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")
    app.add_typer(outbox_app, name="outbox")
    actor = admin.cli_actor

    # --- peers ----------------------------------------------------------------------------

    @peer_app.command("show")
    def peer_show(data_dir: DataDir, party: Annotated[str, typer.Argument(help="Party code.")]) -> None:
        """Everything known about a peer: bundle, keys, deliveries, queue, audit log heads (JSON)."""
        _show(admin.list_peers(_node(data_dir), party)[0])

    @peer_app.command("suspend")
    def peer_suspend(
        data_dir: DataDir,
        party: Annotated[str, typer.Argument(help="Party code.")],
        reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
    ) -> None:
        """Send nothing to the peer and accept nothing from it; its queued messages wait."""
        view = admin.set_peer_suspended(_node(data_dir), party, True, actor(), reason)
        typer.echo(f"Peer {party} suspended; {view['queue_depth']} message(s) held.")

    @peer_app.command("resume")
    def peer_resume(data_dir: DataDir, party: Annotated[str, typer.Argument(help="Party code.")]) -> None:
        """Resume exchanging with a suspended peer."""
        view = admin.set_peer_suspended(_node(data_dir), party, False, actor())
        typer.echo(f"Peer {party} resumed; {view['queue_depth']} message(s) to deliver.")

    @peer_app.command("update")
    def peer_update(
        data_dir: DataDir,
        party: Annotated[str, typer.Argument(help="Party code.")],
        bundle: Annotated[Path, typer.Argument(help="The peer's new bundle file.")],
        fingerprint: Annotated[str, typer.Option(help="The fingerprint the other Party read to you.")],
    ) -> None:
        """Import a newer bundle version of a known peer after checking its fingerprint."""
        result = admin.import_peer_bundle(_node(data_dir), party, bundle.read_bytes(), fingerprint, actor())
        typer.echo(f"Peer {party}: bundle version {result['bundle_version']} ({result['outcome']}).")

    # --- keys ------------------------------------------------------------------------------

    @keys_app.command("list")
    def keys_list(data_dir: DataDir) -> None:
        """This node's keys, their validity and revocations, and the bundle version (JSON)."""
        _show(admin.keys_view(_node(data_dir)))

    @keys_app.command("rotate")
    def keys_rotate(
        data_dir: DataDir,
        overlap: Annotated[str, typer.Option(help="How long the old keys stay valid: 7d, 12h...")] = "7d",
        passphrase: Passphrase = None,
    ) -> None:
        """New node signing and encryption keys (new bundle version); old keys stay valid for --overlap."""
        node = _node(data_dir)
        result = admin.rotate_keys(
            node, parse_duration(overlap), _root_passphrase(node, passphrase), actor(), push=False
        )
        typer.echo(
            f"Bundle version {result['bundle_version']}: signing key {result['signing_key']}, "
            f"encryption key {result['encryption_key']}; the old keys stay valid until "
            f"{result['overlap_until']}."
        )
        typer.echo(
            "The running node loads the new keys and sends the new bundle to its peers within seconds."
        )

    @keys_app.command("revoke")
    def keys_revoke(
        data_dir: DataDir,
        key_id: Annotated[str, typer.Argument(help="An old node key or a signatory key.")],
        reason: Annotated[str, typer.Option(help="Why (published to the peers).")],
        passphrase: Passphrase = None,
    ) -> None:
        """Revoke a node key (not the current one: rotate first) or a signatory's key."""
        node = _node(data_dir)
        result = admin.revoke(node, key_id, reason, _root_passphrase(node, passphrase), actor(), push=False)
        typer.echo(
            f"{result['kind'].capitalize()} key {key_id} revoked from {result['revoked_at']} "
            f"(bundle version {result['bundle_version']})."
        )

    # --- users -------------------------------------------------------------------------------

    @user_app.command("list")
    def user_list(
        data_dir: DataDir, role: Annotated[str | None, typer.Option(help="Only this role.")] = None
    ) -> None:
        """Users (id, name, role, clearance, state); never their tokens."""
        for u in admin.list_users(_node(data_dir), role):
            typer.echo(
                f"{u['id']}\t{u['name']}\t{u['role']}\t{u['clearance']}\t"
                f"{'disabled' if u['disabled'] else 'enabled'}\t{u['signatory_key_id'] or '-'}"
            )

    @user_app.command("disable")
    def user_disable(data_dir: DataDir, user_id: Annotated[int, typer.Argument(help="User id.")]) -> None:
        """The user's token stops working at once."""
        admin.set_user_disabled(_node(data_dir), user_id, True, actor())
        typer.echo(f"User {user_id} disabled.")

    @user_app.command("enable")
    def user_enable(data_dir: DataDir, user_id: Annotated[int, typer.Argument(help="User id.")]) -> None:
        admin.set_user_disabled(_node(data_dir), user_id, False, actor())
        typer.echo(f"User {user_id} enabled.")

    @user_app.command("role")
    def user_role(
        data_dir: DataDir,
        user_id: Annotated[int, typer.Argument(help="User id.")],
        role: Annotated[str, typer.Argument(help="clerk|signatory|reader|operator|auditor")],
        clearance: Annotated[str | None, typer.Option(help="New clearance level.")] = None,
        signing_key: Annotated[
            str | None, typer.Option(help="Signatory: the authorisation's key id.")
        ] = None,
    ) -> None:
        """Change a user's role (and clearance)."""
        u = admin.update_user(
            _node(data_dir),
            user_id,
            actor(),
            role=role,
            clearance=clearance,
            signatory_key_id=signing_key,
        )
        typer.echo(f"User {user_id}: role {u['role']}, clearance {u['clearance']}.")

    @user_app.command("rotate-token")
    def user_rotate_token(
        data_dir: DataDir, user_id: Annotated[int, typer.Argument(help="User id.")]
    ) -> None:
        """A new token (shown once); the old one stops working at once."""
        _, token = admin.rotate_user_token(_node(data_dir), user_id, actor())
        typer.echo(f"Token (shown once): {token}")

    # --- outbox --------------------------------------------------------------------------------

    @outbox_app.command("list")
    def outbox_list(
        data_dir: DataDir,
        state: Annotated[str | None, typer.Option(help="queued|in_flight|delivered|parked")] = None,
        peer: Annotated[str | None, typer.Option(help="Only this peer.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    ) -> None:
        """Deliveries, newest first: message, peer, state, attempts, next try, last error."""
        listing = admin.list_outbox(_node(data_dir), state, peer, limit)
        typer.echo("  ".join(f"{k}={v}" for k, v in listing["counts"].items()))
        for i in listing["items"]:
            typer.echo(
                f"{i['message_id']}\t{i['peer']}\t{i['state']}{' (held)' if i['held'] else ''}\t"
                f"attempts={i['attempts']}\tnext={i['next_attempt_at']}\t{i['last_error'] or ''}"
            )

    @outbox_app.command("show")
    def outbox_show(data_dir: DataDir, message_id: Annotated[str, typer.Argument()]) -> None:
        _show(admin.outbox_item(_node(data_dir), message_id))

    @outbox_app.command("retry")
    def outbox_retry(data_dir: DataDir, message_id: Annotated[str, typer.Argument()]) -> None:
        """Try a queued message now instead of at its next backoff step."""
        admin.retry_now(_node(data_dir), message_id, actor())
        typer.echo(f"{message_id}: due now.")

    @outbox_app.command("park")
    def outbox_park(
        data_dir: DataDir,
        message_id: Annotated[str, typer.Argument()],
        reason: Annotated[str, typer.Option(help="Why (kept as its last error).")],
    ) -> None:
        """Stop delivering a message until it is requeued."""
        admin.park_message(_node(data_dir), message_id, reason, actor())
        typer.echo(f"{message_id}: parked.")

    @outbox_app.command("requeue")
    def outbox_requeue(data_dir: DataDir, message_id: Annotated[str, typer.Argument()]) -> None:
        """Deliver a parked message again (due now, with a fresh age window)."""
        admin.requeue_message(_node(data_dir), message_id, actor())
        typer.echo(f"{message_id}: requeued.")

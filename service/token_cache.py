"""PostgreSQL: bearer tokens checked once, then kept until the users' table changes.

Every request to the user and admin APIs names its user by a bearer token
(``service.auth``). Read from the database each time, the check cost the node a
round trip and, under load, 7.8% of the sending node's interpreter samples (py-spy, the
benchmark's throughput phase). On
PostgreSQL a trigger (migration 0007) notifies ``USER_CHANNEL`` whenever a
statement changes ``user_account``, however it was made (the CLI, the admin
API, plain SQL); this cache listens on a connection of its own and forgets
everything it holds at each notification. So a user disabled, a token rotated
or a role changed is refused from the moment the change commits, give or take
the milliseconds the notification takes to arrive.

The cache trusts itself only while it knows it hears: every half second it
notifies the channel itself (a probe, from another session, as a change would
come; taken only from that session, with this cache's own random name), and it
answers only while a probe sent within ``TRUST_SECONDS`` has come back, which
proves that every change committed before that probe has been heard: the
server delivers notifications in commit order. Each probe also checks that the
trigger is in place and enabled. Otherwise (at start, after a lost or silently
cut connection, behind a connection pooler that does not pass notifications
on, with the trigger dropped or disabled) it answers nothing and every request
reads the database, as without it. A read that began before a change is not
kept (``generation``). SQLite has no notifications: there the token is read on
every request, from the local file, at a fraction of the cost.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.background import BackgroundLoop
from service.db import unwrapped_reads

log = structlog.get_logger("prolink.token_cache")

#: What the trigger of migration 0007 notifies on a change to ``user_account``.
USER_CHANNEL = "prolink_user_account"
#: How the listener's connection names itself to the server (``pg_stat_activity``).
APPLICATION_NAME = "prolink-token-cache"
#: How long one round listens after sending its probe.
LISTEN_SECONDS = 0.5
#: The cache answers only while its last probe came back, sent at most this long ago.
TRUST_SECONDS = 2.0
#: The payload of a probe (a change notifies an empty one).
PROBE_PREFIX = "probe:"
#: More distinct tokens than this in use at once: start again from empty (a node has tens of users).
MAX_ENTRIES = 10_000


#: A probe, with the sending session's process id and whether the trigger that announces changes is in
#: place and enabled (not ``D``isabled, nor only for replication sessions).
_PROBE = text(
    "SELECT pg_notify(:channel, :payload), pg_backend_pid(), EXISTS (SELECT FROM pg_trigger"
    " WHERE tgrelid = 'user_account'::regclass AND tgname = 'user_account_changed'"
    " AND tgenabled IN ('O', 'A'))"
)


class TokenCache(BackgroundLoop):
    """Principals by token digest (``get``, ``put``), forgotten at every change to ``user_account``."""

    failure_event = "token_cache_listener_failed"

    def __init__(self, engine: Engine) -> None:
        super().__init__("token-cache")
        self._engine = engine
        self._libpq = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._lock = threading.Lock()
        self._entries: dict[str, Any] = {}
        self._generation = 0
        self._heard_at = float("-inf")  # when the last probe that came back was sent; -inf: not hearing
        self._probes = 0
        self._name = secrets.token_hex(8)  # a probe is told from another cache's (another replica's) by it
        self._announced = True  # whether the last probe found the trigger in place (a change is warned of)
        self._conn: Any = None

    # --- used by ``service.auth`` on the event loop -------------------------------

    @property
    def generation(self) -> int:
        """Taken before a read; ``put`` keeps the read's result only if no change came in between."""
        return self._generation

    def hears(self) -> bool:
        """Whether it hears changes now: a probe sent within ``TRUST_SECONDS`` came back (``round``)."""
        return time.monotonic() - self._heard_at <= TRUST_SECONDS

    def get(self, digest: str) -> Any:
        """The principal of ``digest`` if the cache holds it and hears changes now; else None."""
        return self._entries.get(digest) if self.hears() else None

    def put(self, digest: str, principal: Any, generation: int) -> None:
        """Keep what a read that began at ``generation`` found, unless a change has come in since."""
        with self._lock:
            if generation != self._generation or not self.hears():
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {}
            self._entries[digest] = principal

    def forget(self, *, stop_trusting: bool = False) -> None:
        """Forget everything (a change to ``user_account``, or the connection new); ``stop_trusting``: and
        answer nothing until a probe comes back again (the connection lost, the trigger missing)."""
        with self._lock:
            self._generation += 1
            self._entries = {}
            if stop_trusting:
                self._heard_at = float("-inf")

    # --- the listener (``BackgroundLoop``) ---------------------------------------

    def interval(self) -> float:
        return 1.0  # after a failed round: reconnect a second later

    def round(self) -> bool:
        """Send a probe on the channel, then listen for ``LISTEN_SECONDS``: a change forgets everything; the
        probe coming back proves that every change committed before it was sent has been heard (the server
        delivers notifications in commit order), so the cache is trusted from then for ``TRUST_SECONDS``.
        A probe that does not come back (a broken connection, a pooler that does not pass notifications
        on) leaves the cache answering nothing once that time is up."""
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self._libpq,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                    tcp_user_timeout=int(TRUST_SECONDS * 1000),
                    application_name=APPLICATION_NAME,
                )
                self._conn.execute(f"LISTEN {USER_CHANNEL}")
                self.forget()  # what was read before we listened may be stale
                log.info("token_cache_listening")
            self._probes += 1
            probe, sent_at = f"{PROBE_PREFIX}{self._name}:{self._probes}", time.monotonic()
            sender, announced = self._send_probe(probe)
            if announced != self._announced:
                self._announced = announced
                if not announced:
                    log.warning(
                        "token_cache_not_announced",
                        detail="the trigger user_account_changed is "
                        "missing or disabled: every request reads its token",
                    )
            if not announced:  # changes are not announced: trust nothing, until the trigger is back
                self.forget(stop_trusting=True)
            # (notifications that arrived while the probe was sent are held by psycopg, and come first here)
            for notify in self._conn.notifies(timeout=LISTEN_SECONDS):
                if notify.payload == probe and notify.pid == sender:
                    if announced:
                        self._heard_at = sent_at
                elif not notify.payload.startswith(PROBE_PREFIX):  # (another replica's probe is no change)
                    self.forget()
        except Exception:
            self._lost()
            raise
        return True  # probe and listen again at once

    def _send_probe(self, payload: str) -> tuple[int, bool]:
        """Notify the channel with ``payload`` from another session (a connection of the node's pool, so
        the probe's return proves delivery between sessions, as a change's would come); the sending
        session's process id, and whether the trigger of migration 0007 is in place and enabled."""
        with unwrapped_reads(self._engine).connect() as conn:
            _, sender, announced = conn.execute(_PROBE, {"channel": USER_CHANNEL, "payload": payload}).one()
        return int(sender), bool(announced)

    def close(self) -> None:
        self._lost()

    def _lost(self) -> None:
        self.forget(stop_trusting=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection: nothing more to do
                log.debug("token_cache_close_failed", error_type=type(exc).__name__)

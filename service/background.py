"""The node's background loops (delivery, key sync, audit heads): one daemon thread each, one shape.

A loop runs ``round()`` until stopped. A round that did work is followed at
once by the next; otherwise the loop waits ``interval()`` seconds or until
``wake()``. A wake that arrives during a round is not lost: the next wait
returns at once. A round that raises is logged (type and message only) and
the loop goes on, so a database restart or a peer being down never stops it.
"""

from __future__ import annotations

import threading

import structlog

log = structlog.get_logger("prolink.background")


class BackgroundLoop:
    """Subclasses give ``round`` and ``interval``; ``close`` frees what they hold after the thread ended."""

    #: The log event of a round that failed.
    failure_event = "background_round_failed"

    def __init__(self, name: str) -> None:
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def wake(self) -> None:
        """Run the next round now instead of after the interval."""
        if not self._wake.is_set():  # under load most wakes find it set: spare the lock and the notify
            self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                worked = self.round()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad round
                log.error(self.failure_event, error_type=type(exc).__name__, error=str(exc)[:300])
                worked = False
            if not worked:
                self._wake.wait(self.interval())

    def round(self) -> bool:
        """One round; True if it did work (the next round follows at once)."""
        raise NotImplementedError

    def interval(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """After the thread ended: close clients and pools."""

"""A uvicorn server on the node's HTTP stack and loop, in a thread, on a free loopback port (for tests)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import uvicorn

from service.demo import free_port, release_port
from service.server import loop_factory


@contextmanager
def serving(app: Any, protocol: type[asyncio.Protocol], ctx: ssl.SSLContext | None = None) -> Iterator[int]:
    """``app`` served by ``protocol`` on 127.0.0.1 (behind ``ctx`` if given), on the node's event loop, in
    a thread; yields the port, and stops the server (joining its thread, 10 s at most) afterwards."""
    port = free_port()
    tls: dict[str, Any] = {"ssl_context_factory": lambda _c, _d: ctx} if ctx is not None else {}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        **tls,
    )
    server = uvicorn.Server(config)
    server.capture_signals = nullcontext  # type: ignore[assignment,method-assign]

    def run() -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    release_port(port)  # the server listens on it now
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)

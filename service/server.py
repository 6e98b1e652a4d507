"""``prolink serve``: the peer API (mutual TLS), the user API and the delivery worker in one process.

The peer listener speaks TLS 1.3 only (1.2 where the operator allows it),
demands a client certificate and trusts only the CAs in known peers' bundles:
a connection without a certificate, with a stranger's, or with an older TLS
version fails in the handshake and never reaches HTTP.

Both servers run on uvloop's event loop and parse HTTP with httptools, the
fastest stack uvicorn offers; where either is not installed (another
platform) they fall back to asyncio's loop and h11. h11 bounds request heads
but times out neither heads nor bodies, so the node warns at start-up when it
runs on h11 (``http_without_timeouts``). The choice is made here only:
``loop_factory`` and ``http_protocols``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from keys import load_identity, server_ssl_context
from service.admin import key_sync
from service.audit_heads import HeadPublisher
from service.db import close_loop_connections, make_engine, session_scope
from service.http_head import (
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_HEAD_TIMEOUT_SECONDS,
    DEFAULT_MAX_HEAD_BYTES,
    HeadLimitedHttpToolsProtocol,
    head_limited,
)
from service.migrate import upgrade
from service.models import Peer
from service.node import Node
from service.peer_api import PeerCertH11Protocol, PeerCertHttpToolsProtocol, create_peer_app
from service.settings import Settings
from service.token_cache import TokenCache
from service.user_api import create_user_app
from service.worker import DeliveryWorker

log = structlog.get_logger("prolink.server")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop if it is installed; None (asyncio's default loop) if not."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def http_protocols(
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    head_timeout_seconds: float = DEFAULT_HEAD_TIMEOUT_SECONDS,
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The peer API's protocol class (it captures the client certificate) and the user API's.

    httptools if it is installed, with request heads bounded at ``max_head_bytes`` and timed out after
    ``head_timeout_seconds``, and bodies timed out after ``body_timeout_seconds`` without progress
    (``service.http_head``); else h11, bounded by its ``Config`` (``h11_max_incomplete_event_size``).
    """
    if PeerCertHttpToolsProtocol is not None and HeadLimitedHttpToolsProtocol is not None:
        timing = (max_head_bytes, head_timeout_seconds, body_timeout_seconds)
        return (
            head_limited(PeerCertHttpToolsProtocol, *timing),
            head_limited(HeadLimitedHttpToolsProtocol, *timing),
        )
    return PeerCertH11Protocol, H11Protocol


def warn_if_untimed(peer_http: type[asyncio.Protocol]) -> None:
    """Say so at start-up when ``http_protocols`` fell back to h11: it times out neither heads nor bodies."""
    if issubclass(peer_http, PeerCertH11Protocol):
        log.warning(
            "http_without_timeouts",
            detail="httptools is not installed: request heads and bodies "
            "are not timed out (request_head_timeout_seconds, request_body_timeout_seconds)",
        )


def build_node(data_dir: Path) -> Node:
    settings = Settings.load(data_dir)
    upgrade(settings.database_url)
    identity = load_identity(settings.data_dir, passphrase=settings.key_passphrase())
    return Node(settings, identity, make_engine(settings.database_url))


def peer_ca_pems(node: Node) -> list[str]:
    with session_scope(node.engine, readonly=True) as s:
        parties = [p.party for p in s.query(Peer).all()]
    return [node.peer(p, active_only=False).bundle.tls_ca_pem for p in parties]


async def serve(data_dir: Path) -> None:
    node = build_node(data_dir)
    settings = node.settings
    sys.setswitchinterval(settings.thread_switch_seconds)
    worker = DeliveryWorker(node)
    heads = HeadPublisher(node)  # signs audit log heads and has peers cosign them

    peer_cas = peer_ca_pems(node)
    if not peer_cas:  # the key sync trusts each peer's CA once it is added (``prolink peer add``)
        log.warning("no_peer_yet", detail="the peer port accepts no client until a peer is added")
    peer_tls = server_ssl_context(
        node.identity, peer_cas, allow_tls12=settings.allow_tls12, allow_no_peer=True
    )
    keys_sync = key_sync(node)  # reloads rotated keys, pushes our bundle to peers, trusts new peer CAs
    keys_sync.attach_tls(peer_tls)
    peer_http, user_http = http_protocols(
        settings.max_request_head_bytes,
        settings.request_head_timeout_seconds,
        settings.request_body_timeout_seconds,
    )
    warn_if_untimed(peer_http)
    peer_config = uvicorn.Config(
        create_peer_app(node),
        host=settings.peer_host,
        port=settings.peer_port,
        http=peer_http,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        ws="none",
        ssl_context_factory=lambda _config, _default: peer_tls,
    )

    user_app = create_user_app(node)
    user_config = uvicorn.Config(
        user_app,
        host=settings.user_host,
        port=settings.user_port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        http=user_http,
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        ws="none",
    )
    peer_server, user_server = uvicorn.Server(peer_config), uvicorn.Server(user_config)

    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        peer_server.should_exit = True
        user_server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown)
    # uvicorn would install its own handlers inside each serve(); two servers share ours instead.
    peer_server.capture_signals = _no_capture  # type: ignore[method-assign]
    user_server.capture_signals = _no_capture  # type: ignore[method-assign]

    if node.engine.dialect.name == "postgresql":  # tokens checked once, until ``user_account`` changes
        node.token_cache = TokenCache(node.engine)
        node.token_cache.start()
    freeze_startup_objects()
    worker.start()
    node.worker = worker  # what is sent from now on goes to it from the send's commit
    heads.start()
    keys_sync.start()
    log.info(
        "node_started",
        party=node.party,
        peer=f"{settings.peer_host}:{settings.peer_port}",
        user=f"{settings.user_host}:{settings.user_port}",
    )
    try:
        await asyncio.gather(peer_server.serve(), user_server.serve())
    finally:
        if node.token_cache is not None:
            node.token_cache.stop()
            node.token_cache = None  # (requests still finishing read the database)
        keys_sync.stop()
        heads.stop()
        node.worker = None  # a send still finishing is queued for the next start (or another replica)
        worker.stop()
        await close_loop_connections(node.engine)
        log.info("node_stopped", party=node.party)


def freeze_startup_objects() -> None:
    """Take everything built at start-up (modules, models, routes, keys) out of the collector's sight.

    A full (generation 2) collection walks every object the collector tracks; with
    those of start-up among them it stopped the node for 75-125 ms at a time in the
    exchange benchmark, stalling every request in flight. Frozen (``gc.freeze``),
    they are never walked again, as they live as long as the process anyway; a full
    collection then took 3-5 ms.
    """
    gc.collect()
    gc.freeze()


def _no_capture() -> object:
    import contextlib

    return contextlib.nullcontext()

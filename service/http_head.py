"""A bound on the head of an HTTP request (its request line and headers), on both of the node's listeners.

uvicorn's h11 protocol stops reading a head at ``h11_max_incomplete_event_size``
and answers 400. httptools, which the node uses where it is installed, has no
such bound: it buffers a head of any size, so a client that never ends its
headers grows the process's memory until it dies. On the user port that needs
no token (heads are read before any route runs); on the peer port, any peer.

``HeadLimitedHttpToolsProtocol`` answers a head over ``max_head_bytes`` with
``431`` and the coded error ``request.headers_too_large``, and closes the
connection; the app never sees the request. A head still incomplete is
measured by what has been read since the request began, and refused as soon as
that passes the bound, without reading more: what httptools buffered
meanwhile is at most one read (uvloop reads up to 256 KiB). A head that arrived
whole is measured exactly (request target and headers).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

log = structlog.get_logger("prolink.http")

#: The default bound (``Settings.max_request_head_bytes``): far above any real request of ours.
DEFAULT_MAX_HEAD_BYTES = 64 * 1024

HEAD_TOO_LARGE_CODE = "request.headers_too_large"


def _error_body(limit: int) -> bytes:
    return json.dumps({"error": {"code": HEAD_TOO_LARGE_CODE,
                                 "message": f"the request line and headers exceed {limit} bytes"}}).encode()


def head_too_large_response(limit: int) -> bytes:
    """The whole HTTP answer to a head over ``limit`` bytes (the connection closes after it)."""
    body = _error_body(limit)
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)) + body


def head_too_large_app(limit: int) -> Any:
    """An ASGI app answering any request as ``head_too_large_response`` does (for a head read whole)."""
    body = _error_body(limit)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]

    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


HeadLimitedHttpToolsProtocol: type[asyncio.Protocol] | None
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: the node uses h11, bounded by its own setting
    HeadLimitedHttpToolsProtocol = None
else:

    class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol, refusing a request whose head passes ``max_head_bytes`` (431)."""

        max_head_bytes = DEFAULT_MAX_HEAD_BYTES

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_open = False  # between a request's first byte and the end of its headers
            self._head_bytes = 0  # read since the request began (while its head is open)
            self._head_size = 0  # its target and headers, as parsed
            super().connection_made(transport)

        def on_message_begin(self) -> None:
            self._head_open, self._head_bytes, self._head_size = True, 0, 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            if self._head_size <= self.max_head_bytes:
                super().on_headers_complete()
                return
            self._log_refusal(self._head_size)
            app, self.app = self.app, head_too_large_app(self.max_head_bytes)
            try:  # uvicorn answers with ``app`` as it would with ours, and closes the connection after
                super().on_headers_complete()
            finally:
                self.app = app

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._head_open or self.transport.is_closing():
                return
            # The head is still open after all of ``data``: every byte of it belongs to the head (or to the
            # request before it, if it began in this read: counted too, which only errs on the safe side).
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._log_refusal(self._head_bytes)
                self.transport.write(head_too_large_response(self.max_head_bytes))
                self.transport.close()
                self._head_open = False

        def _log_refusal(self, size: int) -> None:
            log.warning("request_head_too_large", limit=self.max_head_bytes, size=size,
                        client=self.client[0] if self.client else None)


def head_limited(protocol: type[asyncio.Protocol], max_head_bytes: int) -> type[asyncio.Protocol]:
    """``protocol`` (a ``HeadLimitedHttpToolsProtocol``) bounded at ``max_head_bytes``, not the default."""
    if HeadLimitedHttpToolsProtocol is None or not issubclass(protocol, HeadLimitedHttpToolsProtocol):
        raise TypeError(f"{protocol.__name__} does not bound request heads")
    return type(protocol.__name__, (protocol,), {"max_head_bytes": max_head_bytes})

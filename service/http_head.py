"""A bound on the head of an HTTP request (its request line and headers), on both of the node's listeners.

uvicorn's h11 protocol stops reading a head at ``h11_max_incomplete_event_size``
and answers 400. httptools, which the node uses where it is installed, has no
such bound: it buffers a head of any size, so a client that never ends its
headers grows the process's memory until it dies. On the user port that needs
no token (heads are read before any route runs); on the peer port, any peer.

``HeadLimitedHttpToolsProtocol`` answers a head over ``max_head_bytes`` with
``431`` and the coded error ``request.headers_too_large``, and closes the
connection; the app never sees the request. A head that arrived whole is
measured exactly (request target and headers). One still arriving is measured
by what has been read since the parse last got somewhere (a request began or
ended, its head ended, body arrived), and refused once that passes the bound,
without reading more: httptools has then buffered at most the bound and one
read (uvloop reads up to 256 KiB). The same holds for trailers after a chunked
body. An answer still owed on the connection (pipelined requests) goes out
before it closes.

A head must also arrive in time: ``head_timeout_seconds`` after the connection
was made, or after a kept-alive connection's next request began, a head still
incomplete (or not begun) is answered ``408`` with ``request.head_timeout`` and
the connection closed. Without it a client could hold a connection open for ever
by sending nothing, or a byte of head now and then (uvicorn times out only the
idle gap between requests), and so use up the node's connections.

So must its body: once the head is in, a body that makes no progress for
``body_timeout_seconds`` (no byte arrives while the node is ready to read one) is
answered ``408`` with ``request.body_timeout`` and the connection closed. If the
app already answered without reading the body, the connection is closed one
timeout after the answer at the latest, whatever still trickles in; if an
earlier request on the connection is still being answered (pipelining), the
stalled one is dropped and the connection closed after that answer. It is an
idle bound, as nginx's ``client_body_timeout``: a big attachment on a slow line
takes as long as it needs while bytes keep coming (so a byte now and then still
keeps a body alive; there is no minimum rate). Time the node spends not reading
does not count: the client's idle time starts when reading resumes (the app
asked for the body, after ``100 Continue`` or after falling behind).

h11, the fallback where httptools is not installed, has its own bound
(``h11_max_incomplete_event_size``, set to the same value) and answers 400; it
has neither timeout.
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

#: The default time a request's head may take (``Settings.request_head_timeout_seconds``).
DEFAULT_HEAD_TIMEOUT_SECONDS = 30.0

HEAD_TIMEOUT_CODE = "request.head_timeout"

#: The default time a request body may go without progress (``Settings.request_body_timeout_seconds``).
DEFAULT_BODY_TIMEOUT_SECONDS = 60.0

BODY_TIMEOUT_CODE = "request.body_timeout"


def _timeout_response(code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    ) + body


def head_timeout_response(seconds: float) -> bytes:
    """The whole HTTP answer to a head that did not arrive in ``seconds`` (the connection closes after it)."""
    return _timeout_response(
        HEAD_TIMEOUT_CODE, f"the request line and headers did not arrive within {seconds:g} s"
    )


def body_timeout_response(seconds: float) -> bytes:
    """The whole HTTP answer to a body that made no progress for ``seconds`` (the connection closes after)."""
    return _timeout_response(BODY_TIMEOUT_CODE, f"no part of the request body arrived for {seconds:g} s")


def _error_body(limit: int) -> bytes:
    return json.dumps(
        {
            "error": {
                "code": HEAD_TOO_LARGE_CODE,
                "message": f"the request line and headers exceed {limit} bytes",
            }
        }
    ).encode()


def head_too_large_response(limit: int) -> bytes:
    """The whole HTTP answer to a head over ``limit`` bytes (the connection closes after it)."""
    body = _error_body(limit)
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    ) + body


def head_too_large_app(limit: int) -> Any:
    """An ASGI app answering any request as ``head_too_large_response`` does (for a head read whole)."""
    body = _error_body(limit)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]

    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


HeadLimitedHttpToolsProtocol: type[asyncio.Protocol] | None
try:
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: the node uses h11, bounded by its own setting
    HeadLimitedHttpToolsProtocol = None
else:

    def _cancelled(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
        """Cancel ``timer`` if there is one; returns None, for the attribute that held it."""
        if timer is not None:
            timer.cancel()
        return None

    class _BodyAwareFlow(FlowControl):
        """uvicorn's flow control, telling the protocol each time reading resumes: the app asked for the
        body (after ``100 Continue``, or after it fell behind) or an answer ended. The client's idle time
        is counted from then, never from before."""

        def __init__(self, transport: asyncio.Transport, on_resume: Any) -> None:
            super().__init__(transport)
            self._on_resume = on_resume

        def resume_reading(self) -> None:
            self._on_resume()
            super().resume_reading()

    class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol, refusing a request whose head passes ``max_head_bytes`` (431)."""

        max_head_bytes = DEFAULT_MAX_HEAD_BYTES
        head_timeout_seconds = DEFAULT_HEAD_TIMEOUT_SECONDS
        body_timeout_seconds = DEFAULT_BODY_TIMEOUT_SECONDS

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._progressed = False  # the parse got somewhere in the current read (``data_received``)
            self._stalled_bytes = 0  # read since it last did: a head or trailers still being sent
            self._head_size = 0  # the current request's target and headers, as parsed
            self._refused = False  # once refused, nothing more is read from the connection
            self._head_timer: asyncio.TimerHandle | None = None  # runs while a head is awaited
            self._in_body = False  # the current request's head is in, its body not yet whole
            self._body_at = 0.0  # when its body last made progress (loop time)
            self._body_timer: asyncio.TimerHandle | None = None  # runs while a body is awaited
            self._close_after_answer = False  # a queued request was dropped: close after the answer owed
            super().connection_made(transport)
            self.flow = _BodyAwareFlow(transport, self._reading_resumed)
            self._start_head_timer()  # the first request's head (uvicorn times out no connection before it)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer = _cancelled(self._head_timer)
            self._body_timer = _cancelled(self._body_timer)
            super().connection_lost(exc)

        # Progress: a request began, its head ended, body arrived, or it ended. Header lines are not
        # progress: an endless head (or endless trailers after a chunked body) never makes any.
        def on_message_begin(self) -> None:
            self._progressed, self._head_size = True, 0
            if self._head_timer is None:  # a later request on a kept-alive connection: its head is timed too
                self._start_head_timer()
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._progressed = True
            self._head_timer = _cancelled(self._head_timer)
            if self._head_size <= self.max_head_bytes:
                self._in_body, self._body_at = True, self.loop.time()
                super().on_headers_complete()
                return
            self._log_refusal(self._head_size)
            app, self.app = self.app, head_too_large_app(self.max_head_bytes)
            try:  # uvicorn answers with ``app`` in turn, as with ours, and closes the connection after
                super().on_headers_complete()
            finally:
                self.app = app

        def on_body(self, body: bytes) -> None:
            self._progressed = True
            if self.cycle is None or not self.cycle.response_complete:  # after the answer, bytes are dropped
                self._body_at = self.loop.time()
            super().on_body(body)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._close_after_answer and not self.transport.is_closing():
                self.transport.close()

        def _reading_resumed(self) -> None:
            if self._in_body:
                self._body_at = self.loop.time()

        def on_message_complete(self) -> None:
            self._progressed = True
            self._in_body = False
            self._body_timer = _cancelled(self._body_timer)
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._progressed = False
            super().data_received(data)
            if self._in_body and self._body_timer is None and not self._refused:
                # A body still to come (a request read whole in one go starts no timer).
                self._body_timer = self.loop.call_later(self.body_timeout_seconds, self._check_body)
            if self._progressed:
                self._stalled_bytes = 0
                return
            if self.transport.is_closing():
                return
            self._stalled_bytes += len(data)
            if self._stalled_bytes > self.max_head_bytes:
                self._refuse(self._stalled_bytes)

        def _refuse(self, size: int) -> None:
            """Stop reading a head (or trailers) past the bound, without cutting short an answer owed."""
            self._log_refusal(size)
            self._stop_reading(head_too_large_response(self.max_head_bytes))

        def _stop_reading(self, answer: bytes) -> None:
            """Read nothing more; send ``answer`` and close, or finish an answer still owed first."""
            self._refused = True
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # nothing owed: answer this one, and close
                self.transport.write(answer)
                self.transport.close()
            elif cycle.more_body:  # the request being served never ends (endless trailers): drop it
                self.transport.abort()
            else:  # an earlier request (pipelined) is still being answered: finish it, then close
                cycle.keep_alive = False

        def _start_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

        def _head_timed_out(self) -> None:
            """No whole head in time: answer 408 and close, once an answer still owed has gone out."""
            self._head_timer = None
            if self._refused or self.transport.is_closing():
                return
            log.warning("request_head_timeout", seconds=self.head_timeout_seconds, client=self._client_host())
            self._stop_reading(head_timeout_response(self.head_timeout_seconds))

        def _check_body(self) -> None:
            """A body that made no progress for ``body_timeout_seconds`` while we were ready for it: 408."""
            self._body_timer = None
            if not self._in_body or self._refused or self.transport.is_closing():
                return
            now, cycle = self.loop.time(), self.cycle
            if self.flow.read_paused or getattr(cycle, "waiting_for_100_continue", False):
                self._body_at = now  # the app is behind (or has not asked for the body): not the client
            idle = now - self._body_at
            if idle < self.body_timeout_seconds:
                self._body_timer = self.loop.call_later(self.body_timeout_seconds - idle, self._check_body)
                return
            log.warning("request_body_timeout", seconds=self.body_timeout_seconds, client=self._client_host())
            self._refused = True
            queued = [item for item in self.pipeline if item[0] is cycle]
            if queued:  # an earlier request is still being answered: drop this one, close after that answer
                self.pipeline.remove(queued[0])
                self._close_after_answer = True
            elif cycle is not None and not cycle.response_started:
                self.transport.write(body_timeout_response(self.body_timeout_seconds))
                cycle.disconnected = True  # the app's wait for the body ends; what it answers is dropped
                cycle.message_event.set()
                self.transport.close()
            elif cycle is not None and not cycle.response_complete:  # an answer begun: it cannot be finished
                self.transport.abort()
            else:  # the app answered without the body: nothing is owed
                self.transport.close()

        def _client_host(self) -> str | None:
            return self.client[0] if self.client else None

        def _log_refusal(self, size: int) -> None:
            log.warning(
                "request_head_too_large", limit=self.max_head_bytes, size=size, client=self._client_host()
            )


def head_limited(
    protocol: type[asyncio.Protocol],
    max_head_bytes: int,
    head_timeout_seconds: float = DEFAULT_HEAD_TIMEOUT_SECONDS,
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> type[asyncio.Protocol]:
    """``protocol`` (a ``HeadLimitedHttpToolsProtocol``) bounded at ``max_head_bytes``, timing heads out
    after ``head_timeout_seconds`` and stalled bodies after ``body_timeout_seconds``, not the defaults."""
    if HeadLimitedHttpToolsProtocol is None or not issubclass(protocol, HeadLimitedHttpToolsProtocol):
        raise TypeError(f"{protocol.__name__} does not bound request heads")
    return type(
        protocol.__name__,
        (protocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout_seconds": head_timeout_seconds,
            "body_timeout_seconds": body_timeout_seconds,
        },
    )

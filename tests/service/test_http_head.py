"""Request heads are bounded on the node's HTTP stack (``service.http_head``), on real sockets.

httptools alone buffers a request line and headers of any size; the node's
protocol classes answer 431 ``request.headers_too_large`` and close the
connection once a head passes the limit, and serve everything below it,
whatever the size of the body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from service.http_head import (
    BODY_TIMEOUT_CODE,
    HEAD_TIMEOUT_CODE,
    HEAD_TOO_LARGE_CODE,
    HeadLimitedHttpToolsProtocol,
    head_limited,
)
from service.server import http_protocols
from tests.service.http_server import serving

pytestmark = pytest.mark.skipif(HeadLimitedHttpToolsProtocol is None, reason="httptools is not installed")

LIMIT = 16 * 1024


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the number of headers and body bytes it was given."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"headers": len(scope["headers"]), "body": size}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serving(protocol: type[asyncio.Protocol]) -> Any:
    return serving(_echo, protocol)


def _user_protocol() -> type[asyncio.Protocol]:
    return http_protocols(LIMIT)[1]


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (which it must, within seconds)."""
    sock.settimeout(5)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:  # closed with our unread bytes still in its buffer
        pass
    return answer


def _header_lines(total: int, line: int = 1024) -> bytes:
    count = total // line
    return b"".join(b"x-filler-%d: %s\r\n" % (i, b"a" * (line - 20)) for i in range(count))


def _one_json_answer(sock: socket.socket, received: bytes = b"") -> bytes:
    """``received`` and what follows it until the end of one answer with a JSON body (its closing brace),
    leaving the connection open; stops early if the server closes it."""
    answer = received
    while b"}" not in answer and (chunk := sock.recv(65536)):
        answer += chunk
    return answer


def _status_and_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_head_past_the_limit_is_refused_with_431_and_the_connection_closed() -> None:
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        sent = 0
        try:  # headers without end: the server must stop reading long before this is all sent
            for _ in range(64):
                sock.sendall(b"x-long: " + b"a" * (1024 * 1024) + b"\r\n")
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_answer(sock)
    assert sent < 64  # it stopped reading, and closed
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in answer.lower()
    status, body = _status_and_json(answer)
    assert status == 431 and body["error"]["code"] == HEAD_TOO_LARGE_CODE


def test_a_single_header_line_past_the_limit_is_refused() -> None:
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"b" * (4 * LIMIT) + b"\r\n\r\n")
        answer = _read_answer(sock)
    assert _status_and_json(answer)[1]["error"]["code"] == HEAD_TOO_LARGE_CODE


def test_a_head_just_under_the_limit_is_served() -> None:
    headers = _header_lines(LIMIT - 2048)
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n" + headers + b"connection: close\r\n\r\n")
        status, body = _status_and_json(_read_answer(sock))
    assert status == 200 and body["headers"] == headers.count(b"\r\n") + 2


def test_a_large_body_is_not_taken_for_a_large_head() -> None:
    body = b"z" * (4 * 1024 * 1024)  # arrives in the same reads as the head
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        sock.sendall(head + body)
        status, answer = _status_and_json(_read_answer(sock))
    assert status == 200 and answer["body"] == len(body)


def test_the_bound_is_per_request_on_a_kept_alive_connection() -> None:
    headers = _header_lines(LIMIT * 3 // 4)  # three quarters each: together they pass the limit
    request = b"GET / HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n"
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for _ in range(3):
            sock.sendall(request)
            answer = _one_json_answer(sock)
            assert answer.startswith(b"HTTP/1.1 200 ")


def test_both_listeners_are_bounded_at_the_configured_size() -> None:
    peer, user = http_protocols(LIMIT, 7.5)
    assert issubclass(user, HeadLimitedHttpToolsProtocol)
    assert issubclass(peer, HeadLimitedHttpToolsProtocol)
    assert peer.max_head_bytes == user.max_head_bytes == LIMIT
    assert peer.head_timeout_seconds == user.head_timeout_seconds == 7.5
    with pytest.raises(TypeError):
        head_limited(asyncio.Protocol, LIMIT)


def _endless(sock: socket.socket, line: bytes) -> int:
    """Sends ``line`` (about 1 MiB) up to 64 times, until the server closes; how many went."""
    sent = 0
    try:
        for _ in range(64):
            sock.sendall(line)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def _answers(raw: bytes) -> list[tuple[int, bytes]]:
    """The HTTP answers in ``raw``, in order: (status, body), bodies by content-length."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(h.partition(b": ")[::2] for h in lines[1:])
        length = int(next(v for k, v in fields.items() if k.lower() == b"content-length"))
        found.append((int(lines[0].split(b" ")[1]), rest[:length]))
        raw = rest[length:]
    return found


def test_a_large_body_before_a_pipelined_request_is_not_taken_for_a_head() -> None:
    body = b"z" * (3 * LIMIT)  # its tail and the next request's head share a read
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
            + b"GET /b HTTP/1.1\r\nhost: x\r\n"
        )
        time.sleep(0.3)  # the second head is incomplete at the end of that read
        sock.sendall(b"connection: close\r\n\r\n")
        answers = _answers(_read_answer(sock))
    assert [status for status, _ in answers] == [200, 200]
    assert json.loads(answers[0][1])["body"] == len(body)


def test_an_endless_head_after_a_pipelined_request_leaves_that_request_its_answer() -> None:
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: x\r\n"
        )
        sent = _endless(sock, b"x-long: " + b"a" * (1024 * 1024) + b"\r\n")
        answers = _answers(_read_answer(sock))
    assert sent < 64
    assert answers[0][0] == 200 and json.loads(answers[0][1])["body"] == 3  # its own answer, not a 431
    assert [status for status, _ in answers[1:]] in ([], [431])  # then the connection closed


def test_endless_trailers_after_a_chunked_body_are_refused() -> None:
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n")
        sent = _endless(sock, b"x-trailer: " + b"t" * (1024 * 1024) + b"\r\n")
        _read_answer(sock)  # whatever came back, the server closed the connection (else this times out)
    assert sent < 64


def test_a_head_sent_byte_by_byte_is_served() -> None:
    request = b"GET / HTTP/1.1\r\nhost: x\r\nx-a: " + b"a" * 200 + b"\r\nconnection: close\r\n\r\n"
    with _serving(_user_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in request:
            sock.sendall(bytes([byte]))
        status, body = _status_and_json(_read_answer(sock))
    assert status == 200 and body["headers"] == 3


# --- heads must arrive in time (slow clients) ---------------------------------------------------------

TIMEOUT = 0.5


def _timed_protocol() -> type[asyncio.Protocol]:
    return http_protocols(LIMIT, TIMEOUT)[1]


def test_a_head_that_trickles_in_is_answered_408_and_the_connection_closed() -> None:
    with _serving(_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        try:  # a header line now and then, never the end of the head
            for i in range(8):
                time.sleep(TIMEOUT / 4)
                sock.sendall(b"x-slow-%d: a\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_answer(sock)
        elapsed = time.monotonic() - started
    status, body = _status_and_json(answer)
    assert status == 408 and body["error"]["code"] == HEAD_TIMEOUT_CODE
    assert b"connection: close" in answer.lower()
    assert TIMEOUT <= elapsed < TIMEOUT + 3


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout() -> None:
    with _serving(_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        answer = _read_answer(sock)
    assert _status_and_json(answer)[1]["error"]["code"] == HEAD_TIMEOUT_CODE


def test_heads_in_time_are_served_and_each_request_of_a_kept_alive_connection_is_timed_anew() -> None:
    with _serving(_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for _ in range(3):  # slower than the timeout in all, but each head within it
            sock.sendall(b"GET / HTTP/1.1\r\n")
            time.sleep(TIMEOUT / 3)
            sock.sendall(b"host: x\r\n\r\n")
            answer = _one_json_answer(sock)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(TIMEOUT / 2)  # idle between requests (uvicorn's keep-alive timeout is 5 s)
        sock.sendall(b"GET / HTTP/1.1\r\n")  # then a head that never ends
        assert _status_and_json(_read_answer(sock))[1]["error"]["code"] == HEAD_TIMEOUT_CODE


# --- bodies must keep coming (slow clients) ----------------------------------------------------------


def _body_timed_protocol() -> type[asyncio.Protocol]:
    return http_protocols(LIMIT, 30.0, TIMEOUT)[1]


def _post_head(length: int, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n" % (length, extra)


def test_a_body_that_stops_coming_is_answered_408_and_the_connection_closed() -> None:
    with _serving(_body_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head(1000) + b"a" * 10)  # and nothing more
        started = time.monotonic()
        answer = _read_answer(sock)
        elapsed = time.monotonic() - started
    status, body = _status_and_json(answer)
    assert status == 408 and body["error"]["code"] == BODY_TIMEOUT_CODE
    assert b"connection: close" in answer.lower()
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 3


def test_a_body_that_trickles_with_gaps_longer_than_the_timeout_is_cut_off() -> None:
    with _serving(_body_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head(1000))
        try:
            for _ in range(4):
                time.sleep(TIMEOUT * 1.5)
                sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _status_and_json(_read_answer(sock))[1]["error"]["code"] == BODY_TIMEOUT_CODE


def test_a_slow_body_that_keeps_coming_is_served_however_long_it_takes_in_all() -> None:
    with _serving(_body_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        parts = 12  # 12 gaps of a quarter of the timeout: three timeouts in all
        sock.sendall(_post_head(parts * 100))
        for _ in range(parts):
            time.sleep(TIMEOUT / 4)
            sock.sendall(b"a" * 100)
        answer = _one_json_answer(sock)
    status, body = _status_and_json(answer)
    assert status == 200 and body["body"] == parts * 100


async def _slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads its body only after three timeouts' worth of other work."""
    await asyncio.sleep(TIMEOUT * 3)
    await _echo(scope, receive, send)


def test_time_the_app_takes_to_read_the_body_is_not_the_clients() -> None:
    big = 1024 * 1024  # more than uvicorn buffers before it stops reading for the app
    with (
        serving(_slow_reader, _body_timed_protocol()) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.settimeout(10)
        sock.sendall(_post_head(big) + b"a" * big)
        answer = _one_json_answer(sock)
    status, body = _status_and_json(answer)
    assert status == 200 and body["body"] == big


def _after_100_continue(app: Any, pause: float) -> tuple[int, dict[str, Any]]:
    """A 5-byte body sent ``pause`` seconds after ``100 Continue``; the answer's status and JSON body."""
    with serving(app, _body_timed_protocol()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(_post_head(5, b"expect: 100-continue\r\n"))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        time.sleep(pause)
        sock.sendall(b"hello")
        answer = _one_json_answer(sock, interim.partition(b"\r\n\r\n")[2])
    return _status_and_json(answer)


def test_a_client_waiting_for_100_continue_is_not_timed_out_before_the_app_asks_for_the_body() -> None:
    assert _after_100_continue(_slow_reader, 0) == (200, {"headers": 3, "body": 5})


async def _early_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers without reading the body (as a route refusing a bad token does)."""
    await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


def test_a_body_left_unsent_after_an_early_answer_does_not_hold_the_connection() -> None:
    with (
        serving(_early_answer, _body_timed_protocol()) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(_post_head(1000) + b"a" * 10)
        started = time.monotonic()
        answer = _read_answer(sock)  # the 401, then the connection closes once the body stalls
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 401 ") and answer.endswith(b"no")
    assert elapsed < TIMEOUT + 3


async def _reads_just_before_the_check(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Asks for its body a moment before a timeout counted from the head would run out."""
    await asyncio.sleep(TIMEOUT * 0.9)
    await _echo(scope, receive, send)


def test_the_clients_idle_time_starts_when_the_app_asks_for_the_body() -> None:
    """100 Continue goes out just before a timer counted from the head would fire: the client still has
    a whole timeout from then (found in review: it got 408 at once)."""
    answer = _after_100_continue(_reads_just_before_the_check, TIMEOUT * 0.3)
    assert answer == (200, {"headers": 3, "body": 5})


async def _slow_then_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] != "/slow":
        await _echo(scope, receive, send)
        return
    await receive()  # reading resumes for the connection while it works (as a streaming answer's wait does)
    await asyncio.sleep(TIMEOUT * 2)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"slow"})


def test_a_stalled_pipelined_body_never_takes_the_place_of_the_answer_owed_before_it() -> None:
    with (
        serving(_slow_then_echo, _body_timed_protocol()) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n" + _post_head(100) + b"a")
        answers = _answers(_read_answer(sock))  # the first request's answer, then the connection closes
    assert [status for status, _ in answers] == [200]


def test_a_body_trickling_in_after_an_early_answer_does_not_hold_the_connection() -> None:
    with (
        serving(_early_answer, _body_timed_protocol()) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(_post_head(10**12))
        sock.settimeout(0.1)
        started, closed, answer = time.monotonic(), False, b""
        while not closed and time.monotonic() - started < TIMEOUT * 8:
            time.sleep(TIMEOUT * 0.6)  # a byte within every timeout: progress, were it read
            try:
                sock.sendall(b"a")
                while chunk := sock.recv(65536):
                    answer += chunk
                closed = True
            except TimeoutError:
                pass
            except OSError:
                closed = True
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert closed and time.monotonic() - started < TIMEOUT * 4

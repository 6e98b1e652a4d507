"""The benchmarks' delay proxy (bench/delay_proxy.py): bytes pass unchanged, each way late by the delay."""

from __future__ import annotations

import socket
import threading
import time

from sqlalchemy.engine import make_url

from bench.delay_proxy import delayed


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_a_round_trip_through_the_proxy_takes_twice_the_delay_and_keeps_every_byte() -> None:
    server, port = _echo_server()
    payload = bytes(range(256)) * 1024  # 256 KiB: several chunks in flight at once
    try:
        with delayed(f"postgresql+psycopg://u@127.0.0.1:{port}/db", 25.0) as url:
            proxied = make_url(url)
            assert proxied.port != port and proxied.database == "db" and proxied.username == "u"
            with socket.create_connection((proxied.host, proxied.port)) as conn:
                started = time.monotonic()
                conn.sendall(b"ping")
                assert conn.recv(16) == b"ping"
                assert time.monotonic() - started >= 0.05  # 25 ms there, 25 ms back
                received = bytearray()
                conn.sendall(payload)
                while len(received) < len(payload):
                    received += conn.recv(65536)
                assert bytes(received) == payload
    finally:
        server.close()

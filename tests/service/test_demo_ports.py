"""The ports the demo and the tests give their nodes: free, distinct, and not ones the kernel hands to
outgoing connections (a node started seconds later could otherwise find its port taken)."""

from __future__ import annotations

import socket

import pytest

from service.demo import EPHEMERAL_RANGE, free_port, release_port


def test_ports_handed_out_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    try:
        assert len(set(ports)) == len(ports)
        low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 0
        if low > 21000:
            assert all(20000 <= port < low for port in ports)
    finally:
        for port in ports:
            release_port(port)


def test_a_port_is_held_against_other_binders_but_a_server_can_listen_on_it() -> None:
    port = free_port()
    try:
        with socket.socket() as other, pytest.raises(OSError):  # another process's probe: refused
            other.bind(("127.0.0.1", port))
        with socket.socket() as server:  # the node: binds with SO_REUSEADDR, as uvicorn does, and listens
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        release_port(port)
        with socket.socket() as other:  # released: anyone may bind it again
            other.bind(("127.0.0.1", port))
    finally:
        release_port(port)


def test_a_port_something_listens_on_is_skipped(monkeypatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            idle = probe.getsockname()[1]
        candidates = iter([busy, idle])
        monkeypatch.setattr("service.demo.random.randrange", lambda *_: next(candidates))
        monkeypatch.setattr("service.demo._ephemeral_low", lambda: 40000)
        assert free_port() == idle
        release_port(idle)

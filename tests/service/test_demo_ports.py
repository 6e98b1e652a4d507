"""The ports the demo and the tests give their nodes: free, distinct, and not ones the kernel hands to
outgoing connections (a node started seconds later could otherwise find its port taken)."""

from __future__ import annotations

import socket

from service.demo import EPHEMERAL_RANGE, free_port


def test_ports_handed_out_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 0
    if low > 21000:
        assert all(20000 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


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

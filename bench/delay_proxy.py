"""A TCP proxy that delays what passes through it, both ways: a database "across a network" on loopback.

For benchmarks that ask what a round trip to a remote database costs (``bench_store.py --delay-ms``).
Every chunk read from one side is written to the other ``delay`` seconds after it arrived, in order
(a delay line, not a sleep per chunk: chunks in flight overlap as on a real link), so a round trip
costs about twice ``delay`` more than on loopback. Runs as its own process, so that its work never
competes with the measured client for an interpreter:

    python -m bench.delay_proxy --listen 127.0.0.1:15432 --to 127.0.0.1:5432 --delay-ms 0.25

It prints ``ready`` once it listens, and runs until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay`` seconds after it was read; close ``dst`` at the end."""
    line: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def write() -> None:
        try:
            while True:
                due, data = line.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while data := src.recv(CHUNK):
            line.put((time.monotonic() + delay, data))
    except OSError:
        pass
    line.put((0.0, b""))
    writer.join()


def _serve(client: socket.socket, target: tuple[str, int], delay: float) -> None:
    try:
        upstream = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
    back.start()
    _pump(client, upstream, delay)
    back.join()
    client.close()
    upstream.close()


@contextmanager
def delayed(url: str, delay_ms: float) -> Iterator[str]:
    """``url`` (a database URL) through a proxy process that adds ``delay_ms`` each way; the proxy is
    stopped when the block ends."""
    from sqlalchemy.engine import make_url

    target = make_url(url)
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.delay_proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--to",
            f"{target.host or '127.0.0.1'}:{target.port or 5432}",
            "--delay-ms",
            str(delay_ms),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the delay proxy did not start")
        yield target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.kill()
        proc.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to listen on")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added one way, in milliseconds")
    args = parser.parse_args()
    server = socket.create_server(args.listen)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, args.to, args.delay_ms / 1000), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

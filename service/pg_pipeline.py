"""psycopg's pipeline mode, with a transaction's statements sent to the server in one go.

psycopg hands each statement of a pipeline to libpq, and flushes it to the
server, in a turn of its own: a ``poll`` and a ``send`` per statement (per row,
for ``executemany``). Each ``poll`` lets go of the interpreter, and taking it
back waits for whichever thread took it meanwhile: on a busy node (the event
loop sealing messages, delivery threads verifying receipts), up to a switch
interval per statement. A store transaction of a few messages has some forty
statements and rows; beside a busy thread, that waiting costs more than the
server's work (``bench/bench_pg_pipeline.py``).

``buffered_pipeline`` hands each statement to libpq as soon as it is queued;
the connection is non-blocking, so libpq buffers it (writing out part of its
buffer only past 8 KiB, never waiting). The rest is sent when the pipeline
syncs or ends, with a ``poll`` only if the socket cannot take it at once, and
psycopg's fetch that follows every sync reads the results, waiting once for the
server's answer. A round trip costs one ``poll``, not one per statement and two
more. What the server sees is the same: the same messages, in the same order,
ending with the same sync; results and errors are read and raised by psycopg's
own code.

It relies on private details of psycopg's ``Pipeline`` (its ``command_queue``,
``_communicate_gen``, and the fetch after each sync) and on
``psycopg.generators.send``, checked when this module is imported; where they
are missing, ``buffered_pipeline`` is psycopg's pipeline as it comes (correct,
only slower). ``tests/service/test_pg_pipeline.py`` fails if that happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

try:
    from psycopg.generators import send
except ImportError:  # (a psycopg without it: pipelines are left as psycopg makes them, ``BUFFERING``)
    send = None


class _BufferedPipeline(psycopg.Pipeline):
    """A ``psycopg.Pipeline`` that sends what is queued when it syncs or ends (see the module's docstring)."""

    def _communicate_gen(self) -> Any:
        queue, sync = self.command_queue, self.pgconn.pipeline_sync
        synced = False
        while queue:  # into libpq's buffer (no system call, but past 8 KiB a non-blocking send of part of it)
            command = queue.popleft()
            command()
            synced = synced or command == sync
        if synced:  # it syncs or ends: send the buffer (a poll only if the socket cannot take it all at once)
            yield from send(self.pgconn)  # (the fetch that follows every sync reads the results)


#: Whether this psycopg has what ``_BufferedPipeline`` relies on (else pipelines are left as they come).
BUFFERING = all(
    callable(getattr(psycopg.Pipeline, name, None))
    for name in ("_communicate_gen", "_enqueue_sync", "_fetch_gen")
) and callable(send)


@contextmanager
def buffered_pipeline(connection: psycopg.Connection[Any]) -> Iterator[psycopg.Pipeline]:
    """``connection.pipeline()``, its statements sent together when it syncs or ends."""
    with connection.pipeline() as pipeline:
        if BUFFERING and type(pipeline) is psycopg.Pipeline and hasattr(pipeline, "command_queue"):
            pipeline.__class__ = _BufferedPipeline
        yield pipeline

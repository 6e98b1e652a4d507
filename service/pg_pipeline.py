"""psycopg's pipeline mode, with a transaction's statements sent to the server in one go.

psycopg hands each statement of a pipeline to libpq, and flushes it to the
server, in a turn of its own: a ``poll`` and a ``send`` per statement (per row,
for ``executemany``). Each ``poll`` lets go of the interpreter, and taking it
back waits for whichever thread took it meanwhile: on a busy node (the event
loop sealing messages, delivery threads verifying receipts), up to a switch
interval per statement. A store transaction of a few messages has some forty
statements and rows; that waiting, not the server, was most of its time.

``buffered_pipeline`` hands each statement to libpq as soon as it is queued;
the connection is non-blocking, so libpq only buffers it. Nothing is sent or
read until the pipeline syncs or ends, when psycopg's own loop sends the buffer
and reads every result, in a handful of system calls whatever the number of
statements. What the server sees is the same: the same messages, in the same
order, ending with the same sync; errors are raised as psycopg raises them.

It relies on two private details of psycopg's ``Pipeline`` (its
``command_queue`` and ``_communicate_gen``), checked when this module is
imported; where they differ, ``buffered_pipeline`` is psycopg's pipeline as it
comes (correct, only slower). ``tests/service/test_pg_pipeline.py`` fails if that happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


class _BufferedPipeline(psycopg.Pipeline):
    """A ``psycopg.Pipeline`` that sends nothing until it syncs (see the module's docstring)."""

    def _communicate_gen(self) -> Any:
        queue = self.command_queue
        sync = self.pgconn.pipeline_sync
        while queue and queue[0] != sync:  # into libpq's buffer: no system call
            queue.popleft()()
        if queue:  # the pipeline syncs or ends: send everything, read what has come back
            yield from super()._communicate_gen()


#: Whether this psycopg has what ``_BufferedPipeline`` overrides (else pipelines are left as they come).
BUFFERING = (callable(getattr(psycopg.Pipeline, "_communicate_gen", None))
             and callable(getattr(psycopg.Pipeline, "_enqueue_sync", None)))


@contextmanager
def buffered_pipeline(connection: psycopg.Connection[Any]) -> Iterator[psycopg.Pipeline]:
    """``connection.pipeline()``, its statements sent together when it syncs or ends."""
    with connection.pipeline() as pipeline:
        if BUFFERING and type(pipeline) is psycopg.Pipeline and hasattr(pipeline, "command_queue"):
            pipeline.__class__ = _BufferedPipeline
        yield pipeline

"""Group commit: writes that arrive together are stored in one transaction.

Each caller ``submit``s its item and blocks until it is stored. A caller that
finds no group being stored leads: it takes what is queued (up to
``max_items``) and stores it with ``store_group``, in one transaction, while
later arrivals queue for the next group. Under load that turns one begin,
commit and audit-log lock per write into one per group; alone, a caller
stores its item at once, as before.

If storing a group fails, every item of it is stored again alone, in a
transaction of its own: one bad item never fails another, and each caller
gets exactly its own result or its own error.

Coroutines ``submit_async`` instead: their items are queued for one committer
thread, which leads as a caller would, then resolves their futures on their
event loop. A coroutine takes no pool thread and blocks no loop while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

#: A committer thread with nothing to store for this long ends (a node in a test, say, does not keep one).
COMMITTER_IDLE_SECONDS = 10.0

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[Item, Result]):
    """``submit`` stores one item, in a group with whatever else is waiting (see the module's docstring).

    ``store_group`` stores a list of items in one transaction and returns one
    result per item, in order, or raises (the transaction rolled back).
    """

    def __init__(
        self, store_group: Callable[[Sequence[Item]], Sequence[Result]], max_items: int = 64
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._store_group = store_group
        self._max_items = max_items
        self._queue: list[_Slot[Item, Result]] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()  # held while a group is stored
        # ``submit_async``: items of coroutines, stored by one committer thread.
        self._async_lock = threading.Condition()
        self._async_queue: list[
            tuple[_Slot[Item, Result], asyncio.AbstractEventLoop, asyncio.Future[Result]]
        ] = []
        self._committer: threading.Thread | None = None
        self._wakes_due: set[asyncio.AbstractEventLoop] = set()  # loops that will wake the committer

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._queue_lock:
            self._queue.append(slot)
        while not slot.done:
            with self._leader:
                if slot.done:  # a leader stored it while we waited
                    break
                self._store_next()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value] - set with done, unless error is

    def submit_async(self, item: Item) -> asyncio.Future[Result]:
        """``submit`` for a coroutine on an event loop: the item is stored by this object's committer
        thread (started on first use), and the future is resolved on the caller's loop.

        The event loop never blocks and no thread of a pool is taken per item: the
        committer stores what every caller queued meanwhile as one group (with the
        items of threads that ``submit`` at the same time), then resolves that
        group's futures in one call into each loop.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        with self._async_lock:
            self._async_queue.append((_Slot(item), loop, future))
            if self._committer is None:
                committer = threading.Thread(target=self._commit_forever, daemon=True, name="group-commit")
                try:
                    committer.start()
                except BaseException:
                    self._async_queue.pop()
                    raise
                self._committer = committer
            wake = loop not in self._wakes_due
            self._wakes_due.add(loop)
        if wake:
            # The committer is told once the loop has run what is ready now: the other requests of this turn
            # queue their items first and join the same group, instead of each waking it for a group alone.
            loop.call_soon(self._wake_committer, loop)
        return future

    def _wake_committer(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._async_lock:
            self._wakes_due.discard(loop)
            self._async_lock.notify()

    def _commit_forever(self) -> None:
        try:
            while True:
                with self._async_lock:
                    if not self._async_queue:
                        self._async_lock.wait(COMMITTER_IDLE_SECONDS)
                    if not self._async_queue:
                        # Idle: end, saying so before the lock is let go, so that an item queued from now
                        # on starts another committer instead of waiting for this one.
                        self._committer = None
                        return
                    waiting, self._async_queue = self._async_queue, []
                self._commit(waiting)
        finally:
            with self._async_lock:  # ended by a bug: the next ``submit_async`` starts another
                if self._committer is threading.current_thread():
                    self._committer = None

    def _commit(
        self, waiting: list[tuple[_Slot[Item, Result], asyncio.AbstractEventLoop, asyncio.Future[Result]]]
    ) -> None:
        """Store what coroutines queued (leading as ``submit`` would); answer each group's callers as
        soon as it is stored."""
        with self._queue_lock:
            self._queue.extend(slot for slot, _, _ in waiting)
        while waiting:
            with self._leader, contextlib.suppress(BaseException):  # its callers have the error
                self._store_next()
            done = [w for w in waiting if w[0].done]
            waiting = [w for w in waiting if not w[0].done]
            by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter[Item, Result]]] = {}
            for slot, loop, future in done:
                by_loop.setdefault(loop, []).append((future, slot))
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, answers)

    def _store_next(self) -> None:
        """Store the next group from the queue (the caller leads: it holds ``_leader``); nothing if a
        leader before it stored everything queued."""
        with self._queue_lock:
            group, self._queue = self._queue[: self._max_items], self._queue[self._max_items :]
        if not group:
            return
        try:
            self._store(group)
        except BaseException as exc:  # interrupted: no caller may wait for ever on an unstored item
            for slot in group:
                if not slot.done:
                    slot.error, slot.done = exc, True
            raise

    def _store(self, group: list[_Slot[Item, Result]]) -> None:
        try:
            results = self._store_group([s.item for s in group])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting callers, who raise it
            if len(group) == 1:
                group[0].error, group[0].done = exc, True
            else:  # find the one that failed: each alone, in its own transaction
                for slot in group:
                    self._store([slot])
            return
        for slot, result in zip(group, results, strict=True):
            slot.result, slot.done = result, True


_Waiter = tuple[asyncio.Future[Result], _Slot[Item, Result]]


def _resolve(done: list[_Waiter[Item, Result]]) -> None:
    """On the callers' loop: hand each waiting coroutine its result or its error."""
    for future, slot in done:
        if future.cancelled():  # its request went away; the item is stored all the same
            continue
        if slot.error is None:
            future.set_result(slot.result)  # type: ignore[arg-type] - set with done, unless error is
        elif isinstance(slot.error, StopIteration):  # a future refuses it (TypeError): the others must go on
            future.set_exception(RuntimeError(f"storing raised {slot.error!r}"))
        else:
            future.set_exception(slot.error)

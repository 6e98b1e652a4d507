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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

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

    def __init__(self, store_group: Callable[[Sequence[Item]], Sequence[Result]],
                 max_items: int = 64) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._store_group = store_group
        self._max_items = max_items
        self._queue: list[_Slot[Item, Result]] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()  # held while a group is stored

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._queue_lock:
            self._queue.append(slot)
        while not slot.done:
            with self._leader:
                if slot.done:  # a leader stored it while we waited
                    break
                with self._queue_lock:
                    group, self._queue = self._queue[:self._max_items], self._queue[self._max_items:]
                try:
                    self._store(group)
                except BaseException as exc:  # interrupted: no caller may wait for ever on an unstored item
                    for other in group:
                        if not other.done:
                            other.error, other.done = exc, True
                    raise
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value] - set with done, unless error is

    def _store(self, group: list[_Slot[Item, Result]]) -> None:
        try:
            results = self._store_group([s.item for s in group])
        except Exception as exc:
            if len(group) == 1:
                group[0].error, group[0].done = exc, True
            else:  # find the one that failed: each alone, in its own transaction
                for slot in group:
                    self._store([slot])
            return
        for slot, result in zip(group, results, strict=True):
            slot.result, slot.done = result, True

"""Letting go of many objects a slice at a time, so that no one step pays for all.

A snapshot compacts away thousands of log entries at once. Dropping the last
reference to all of them in one go frees them in one go: 1.5-4 ms of a loop
turn on this project's benchmark machine (their memory is cold by then), on
every replica of the group at the same moment, since they compact at the same
index. Handed to a `SlowFree` instead, they are released a slice per step.
"""

from __future__ import annotations


class SlowFree:
    """Lists of objects waiting to be released, oldest first. Not thread-safe."""

    def __init__(self, per_step: int, max_step: int | None = None) -> None:
        self.per_step = per_step
        # What the eighth of a backlog may reach in one step: a large state's
        # snapshot compacts ~440,000 entries at once, and an eighth of those
        # took 50-75 ms of every turn for a while.
        self.max_step = 8 * per_step if max_step is None else max_step
        self._lists: list[list[object]] = []
        self.waiting = 0  # objects still referenced here

    def put(self, items: list) -> None:
        """Take `items` over (the caller must not keep the list)."""
        if items:
            self._lists.append(items)
            self.waiting += len(items)

    def step(self, extra: int = 0) -> None:
        """Release `per_step + extra` objects, or an eighth of those waiting if more.

        The eighth makes a backlog shrink geometrically, up to `max_step` a
        step; `extra` (what the caller added since) keeps up with any rate.
        """
        budget = max(self.per_step + extra, min(self.waiting // 8, self.max_step))
        self.waiting = max(0, self.waiting - budget)
        while budget > 0 and self._lists:
            oldest = self._lists[0]
            if len(oldest) <= budget:
                budget -= len(oldest)
                del self._lists[0]
            else:
                del oldest[-budget:]
                return

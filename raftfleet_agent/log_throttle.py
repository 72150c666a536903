"""Log lines that anyone who can open a connection can trigger, at a bounded rate.

A refused or unauthenticated connection is worth a warning, but a flood of
them must not become a flood of journal lines (the journal rate-limits whole
services, so the flood would hide every other message of the agent). Each
`Throttle` lets one line through per interval and counts the rest; the next
line that goes out says how many were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Throttle:
    """At most one line per `every_s` for one kind of event."""

    __slots__ = ("_clock", "_every_s", "_held", "_last", "_logger")

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every_s = every_s
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log `message % args` now, or count it; True if it was logged."""
        return self._log(logging.WARNING, message, args)

    def info(self, message: str, *args: object) -> bool:
        """The same at INFO: a line that would repeat every round, not an alarm."""
        return self._log(logging.INFO, message, args)

    def _log(self, level: int, message: str, args: tuple[object, ...]) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            self._held += 1
            return False
        if self._held:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._held, now - self._last if self._last is not None else 0.0)
        self._last, self._held = now, 0
        self._logger.log(level, message, *args)
        return True

"""Holding clients to the `Retry-After` the router sent them.

When the router is at its in-flight limit it answers 503 with `Retry-After: 1` at once. A device that
honours it comes back a second later. One that does not (a retry loop without a back-off, a flood of
them in a burst) would be answered 503 again and again, hundreds of times a second over keep-alive
connections, and every one of those answers takes the event loop's time from the requests it is
admitting and from new devices connecting. Here a request that comes back on the same connection
before its `Retry-After` is up waits out the rest first (on the event loop's timer: no thread, no
work), and is then admitted if a slot has freed, else answered 503 again. An honest client never
waits here; an impatient one is answered no faster than it was asked to retry.

A connection is named by its client address and port (ASGI's `scope["client"]`); the table holds
the last `max_tracked` connections told to retry, oldest forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class RetryAfterPacing:
    def __init__(self, retry_after_s: float, *, max_tracked: int = 4096, clock=time.monotonic):
        self.retry_after_s = float(retry_after_s)
        self.max_tracked = max_tracked
        self._clock = clock
        self._told: OrderedDict[tuple, float] = OrderedDict()

    def wait_s(self, connection: tuple | None) -> float:
        """How long a request on `connection` must still wait: the rest of its last Retry-After."""
        told_at = self._told.get(tuple(connection)) if connection is not None else None
        if told_at is None:
            return 0.0
        return max(0.0, told_at + self.retry_after_s - self._clock())

    def told(self, connection: tuple | None) -> None:
        """`connection` was just answered 503 with Retry-After."""
        if connection is None:
            return
        key = tuple(connection)
        self._told[key] = self._clock()
        self._told.move_to_end(key)
        while len(self._told) > self.max_tracked:
            self._told.popitem(last=False)

"""Capped exponential backoff, and a broker-state tracker that logs one line per change.

Why a tracker: a client that logs every failed reconnect attempt buries the one fact an
operator needs (the broker is gone, since when; it is back, after how long) under thousands of
lines. The tracker logs ``kafka lost`` once when the first failure is seen, ``kafka back`` once
when a request succeeds again, and nothing in between; the retry loop waits with
:class:`Backoff` so it never spins.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("dfp_ray.streaming")


class Backoff:
    """Waits ``initial``, ``2 * initial``, ... up to ``maximum`` seconds; :meth:`reset` after a success.

    >>> b = Backoff(0.5, 4.0)
    >>> [b.next_delay() for _ in range(5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    >>> b.reset(); b.next_delay()
    0.5
    """

    def __init__(self, initial: float, maximum: float):
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    def wait(self, stop: threading.Event | None = None) -> float:
        """Sleep the next delay (returns early when ``stop`` is set); returns the delay."""
        delay = self.next_delay()
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)
        return delay


class BrokerState:
    """Whether the brokers answer, with one log line per change (connected / lost / back)."""

    def __init__(self, servers: str, logger: logging.Logger = log):
        self.servers = servers
        self.log = logger
        self.connected = False
        self.ever_connected = False
        self.down_since: float | None = None
        self.outages = 0

    def ok(self, detail: str = "") -> None:
        """A request succeeded."""
        if self.connected:
            return
        suffix = f" {detail}" if detail else ""
        if not self.ever_connected:
            self.log.info("kafka connected: brokers=%s%s", self.servers, suffix)
        else:
            down = time.monotonic() - (self.down_since or time.monotonic())
            self.log.warning("kafka back: brokers=%s answered again after %.1fs%s", self.servers, down, suffix)
        self.connected = True
        self.ever_connected = True
        self.down_since = None

    def failed(self, reason: str, retry_max_s: float) -> None:
        """A request failed because the brokers did not answer."""
        if not self.connected and self.down_since is not None:
            return
        self.down_since = time.monotonic()
        if self.ever_connected:
            self.outages += 1
            self.log.warning(
                "kafka lost: brokers=%s: %s; retrying with backoff (up to %.0fs between attempts)",
                self.servers, reason, retry_max_s,
            )
        else:
            self.log.warning(
                "kafka unreachable: brokers=%s: %s; retrying with backoff (up to %.0fs between attempts)",
                self.servers, reason, retry_max_s,
            )
        self.connected = False

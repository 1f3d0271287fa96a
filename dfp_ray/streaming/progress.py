"""Progress a person can watch: a live line on a terminal, key=value log lines otherwise.

The live line (redrawn in place at most twice a second, on stderr) shows the broker state,
Kafka messages consumed / committed / dead-lettered / skipped, the lag (messages waiting in
the assigned partitions), events per second and detections as the handler reports them, and
the message in flight with its age. Without a terminal (a service, ``ray job submit``, a log
file) the same figures are logged every ``progress_interval`` as one parseable line::

    stream progress state=connected consumed=12 committed=12 dead_lettered=1 skipped=0 messages=14
    lag=3 events=48210 events_per_s=1203.4 detections=17 in_flight=kafka:dfp-control/0@12
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TextIO

log = logging.getLogger("dfp_ray.streaming")


@dataclass
class StreamStats:
    """Counters of one source run (what :meth:`KafkaControlSource.run` returns, with a stop reason)."""

    consumed: int = 0  # Kafka messages read
    committed: int = 0  # Kafka messages whose offset was committed (or, with disable_commit, finished)
    dead_lettered: int = 0  # dead-letter messages sent (one per rejected input)
    skipped: int = 0  # valid control messages the pre-filter dropped
    messages: int = 0  # control messages handed to the handler
    events: int = 0  # as reported by the handler
    detections: int = 0  # as reported by the handler
    handler_errors: int = 0  # failed handler attempts
    outages: int = 0  # times the brokers stopped answering
    lag: int | None = None  # messages waiting in the assigned partitions (None = not known yet)
    state: str = "starting"
    in_flight: str | None = None
    in_flight_since: float | None = field(default=None, repr=False)
    stop_reason: str | None = None
    uncommitted: str | None = None  # the message left uncommitted at exit, if any

    @property
    def exit_code(self) -> int:
        """0 for a clean stop with everything committed; 1 otherwise (handler failed, left uncommitted)."""
        if self.stop_reason in {"handler_failed", "forced"} or self.uncommitted:
            return 1
        return 0

    def fields(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("in_flight_since")
        return data


def _format_fields(values: dict[str, object]) -> str:
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        if " " in text or "=" in text:
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class _ClearLine(logging.Filter):
    """Clears the live line before a log record is written to the same terminal."""

    def __init__(self, display: ProgressDisplay):
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        self.display.clear()
        return True


class ProgressDisplay:
    """Renders :class:`StreamStats`: a live line on a TTY, periodic log lines otherwise."""

    def __init__(self, *, stream: TextIO | None = None, tty: bool | None = None, interval_s: float = 10.0,
                 window_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()
        self._last_draw = 0.0
        self._last_log = time.monotonic()
        self._drawn = False
        self._filters: list[tuple[logging.Handler, _ClearLine]] = []

    def rate(self, stats: StreamStats, now: float) -> float:
        """Events per second over the last ``window_s``."""
        self._samples.append((now, stats.events))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, e0 = self._samples[0]
        return (stats.events - e0) / (now - t0) if now > t0 else 0.0

    def update(self, stats: StreamStats, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_draw >= 0.5:
                self._last_draw = now
                self._draw(self.line(stats, self.rate(stats, now), now))
        elif force or now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info("stream progress %s", _format_fields(self.log_fields(stats, self.rate(stats, now))))

    def log_fields(self, stats: StreamStats, rate: float) -> dict[str, object]:
        return {
            "state": stats.state, "consumed": stats.consumed, "committed": stats.committed,
            "dead_lettered": stats.dead_lettered, "skipped": stats.skipped, "messages": stats.messages,
            "lag": stats.lag, "events": stats.events, "events_per_s": round(rate, 1),
            "detections": stats.detections, "in_flight": stats.in_flight,
        }

    def line(self, stats: StreamStats, rate: float, now: float) -> str:
        lag = "?" if stats.lag is None else f"{stats.lag:,}"
        text = (
            f"kafka {stats.state} | consumed {stats.consumed:,} committed {stats.committed:,} "
            f"dlq {stats.dead_lettered:,} skipped {stats.skipped:,} | lag {lag} | "
            f"{rate:,.0f} events/s | detections {stats.detections:,}"
        )
        if stats.in_flight:
            age = now - (stats.in_flight_since or now)
            text += f" | in flight {stats.in_flight} ({age:.0f}s)"
        return text

    def _draw(self, text: str) -> None:
        if not self._filters:  # log records written to the same terminal take the line down first
            for handler in logging.getLogger().handlers:
                if getattr(handler, "stream", None) is self.stream:
                    flt = _ClearLine(self)
                    handler.addFilter(flt)
                    self._filters.append((handler, flt))
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def close(self, stats: StreamStats) -> None:
        """Final summary (always a log line), and the live line taken down."""
        self.clear()
        for handler, flt in self._filters:
            handler.removeFilter(flt)
        self._filters.clear()
        fields = self.log_fields(stats, 0.0)
        fields.pop("events_per_s")
        fields.pop("in_flight")
        fields["reason"] = stats.stop_reason
        fields["uncommitted"] = stats.uncommitted
        log.info("stream stopped %s", _format_fields(fields))

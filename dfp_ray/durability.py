"""The one error that means "not durable": what a stream must never commit past."""

from __future__ import annotations


class DurabilityError(RuntimeError):
    """An output or a piece of state could not be made durable (a detections file or topic, a
    window checkpoint, the label store). The message that caused it must be processed again,
    never skipped: a stream leaves its offset uncommitted, a batch run reports it."""

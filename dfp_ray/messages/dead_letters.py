"""Dead letters: rejected messages, with their reasons, appended durably to a JSON-lines file."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from dfp_ray.messages.model import Rejection


class DeadLetterWriter:
    """Appends rejections to a JSON-lines file, one object per line, flushed and fsync'd.

    Each line is ``{"message_id", "field", "reason", "raw", "at"}`` (``at`` ISO-8601 UTC). The
    file is opened per write so it can be rotated or read while the router runs; a lock keeps
    lines whole when several threads reject at once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.count = 0

    def write(self, rejection: Rejection) -> None:
        line = json.dumps(rejection.model_dump(mode="json"), default=str, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # owner-only (a dead letter holds the raw message); never through a symlink
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(self.path, flags, 0o600), "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.count += 1

    def write_all(self, rejections: list[Rejection]) -> None:
        for rejection in rejections:
            self.write(rejection)


"""A cross-process lock for sqlite registry writers on one machine."""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    pass

class _ProcessFileLock:
    """An exclusive lock shared by all processes on one machine (POSIX ``flock`` on a file),
    re-entrant within a process.

    flock locks belong to an open file description, so taking the same lock again through a
    second ``open()`` in the same process would wait for itself forever; a process-wide RLock
    plus a hold count makes nested use (open the store inside a registration) safe.
    """

    _registry: dict[Path, _ProcessFileLock] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._handle: Any = None

    @classmethod
    def for_path(cls, path: Path) -> _ProcessFileLock:
        key = path.resolve()
        with cls._registry_lock:
            if key not in cls._registry:
                cls._registry[key] = cls(key)
            return cls._registry[key]

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: in-process lock only
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+b")  # held open while locked
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)

    def _release(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def file_lock(path: Path | None) -> contextlib.AbstractContextManager:
    """Exclusive across processes for ``path`` (re-entrant in-process); a no-op for ``None``."""
    return contextlib.nullcontext() if path is None else _ProcessFileLock.for_path(path).hold()


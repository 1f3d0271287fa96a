"""The router's decisions, without Ray: chunking a batch, where the generic model trains, when to
widen its fit, and the progress counters.

The router actor (:mod:`dfp_ray.actors.router`) only moves references between actors; every
choice it makes is a function here, so it can be unit-tested without a cluster (tests/test_router_plan.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from dfp_ray.config import RayConfig
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.results import FileProblem, LoadInfo, Progress

GENERIC_ACTOR = -1  # placement of the generic fit on the generic model's own actor


def plan_chunks(files: Sequence[FileRef], pool_size: int, cfg: RayConfig) -> list[list[FileRef]]:
    """A batch's files in contiguous chunks (file order kept), one per loading actor.

    The pool's actors are idle while their next work loads (messages and batches run one after
    another), and JSON parsing is CPU work one process cannot spread over cores. Small batches
    stay in one piece (at least ``cfg.load_chunk_files`` files per chunk).

    >>> from datetime import datetime, timezone
    >>> t = datetime(2022, 8, 1, tzinfo=timezone.utc)
    >>> files = [FileRef(url=f"f{i}", size=1, modified=t, batch_time=t) for i in range(20)]
    >>> [len(c) for c in plan_chunks(files, 2, RayConfig())]
    [10, 10]
    >>> [len(c) for c in plan_chunks(files[:10], 2, RayConfig())]
    [10]
    """
    files = list(files)
    n = min(cfg.load_parallelism or pool_size, pool_size, len(files) // cfg.load_chunk_files)
    if n < 2:
        return [files]
    bounds = [round(i * len(files) / n) for i in range(n + 1)]
    return [files[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def owners_with_rows(infos: Sequence[LoadInfo], pool_size: int) -> list[int]:
    """The pool indices that received rows from any loader."""
    return [j for j in range(pool_size) if any(info.owner_users[j] for info in infos)]


def users_per_owner(infos: Sequence[LoadInfo], pool_size: int) -> list[int]:
    """Distinct users each owner received over all chunks (a user may span chunks)."""
    return [len(set().union(*(info.owner_users[j] for info in infos))) for j in range(pool_size)]


def place_generic_fit(
    *, has_generic_actor: bool, data_type: str, rows_per_owner: Sequence[int], stable_owner: int
) -> int:
    """Where the generic model trains: :data:`GENERIC_ACTOR`, or a pool index.

    - With an actor of its own (CPU pools, ``ray.generic_actor``): there, so the pool stays balanced.
    - Payload mode: the generic model holds no state between messages, so it may train anywhere;
      put the long pole on the pool actor with the fewest rows of its own.
    - Streaming mode: its rolling window lives with one actor, ``stable_owner``.

    >>> place_generic_fit(has_generic_actor=True, data_type="payload", rows_per_owner=[5, 1], stable_owner=0)
    -1
    >>> place_generic_fit(has_generic_actor=False, data_type="payload", rows_per_owner=[5, 1], stable_owner=0)
    1
    >>> place_generic_fit(has_generic_actor=False, data_type="streaming", rows_per_owner=[5, 1], stable_owner=0)
    0
    """
    if has_generic_actor:
        return GENERIC_ACTOR
    if data_type == "payload":
        return min(range(len(rows_per_owner)), key=lambda j: (rows_per_owner[j], j))
    return stable_owner


def widen_threads(cfg: RayConfig, pool_size: int) -> int:
    """Intra-op threads the generic fit moves to once the pool is done (1: do not widen).

    >>> widen_threads(RayConfig(), 2)
    2
    >>> widen_threads(RayConfig(generic_threads_after_pool=1), 8)
    1
    """
    threads = cfg.generic_threads_after_pool
    if threads is None:
        threads = max(1, int(pool_size * cfg.num_cpus_per_actor))
    return threads


def should_widen(*, threads: int, pool_done: bool, generic_done: bool) -> bool:
    """Widen the generic fit only when the pool's CPUs are free and the fit is still running."""
    return threads > 1 and pool_done and not generic_done


def unreadable_reason(errors: Sequence[FileProblem]) -> str:
    """The rejection reason for a batch with unreadable files: every file and its reason."""
    return "unreadable file(s): " + "; ".join(f"{e.url}: {e.reason}" for e in errors)


ProgressField = Literal["files_loaded", "rows_loaded", "users_total", "users_done"]


class ProgressTracker:
    """The router's counters for the message in flight, thread-safe: the driver polls a
    :class:`~dfp_ray.results.Progress` snapshot while the router's work thread updates it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = Progress()

    def start(self, message_id: str, kind: str) -> None:
        with self._lock:
            self._state = Progress(message_id=message_id, kind=kind)

    def stage(self, stage: str, *, files_total: int | None = None) -> None:
        with self._lock:
            self._state.stage = stage
            if files_total is not None:
                self._state.files_total = files_total

    def add(self, **counts: int) -> None:
        """Increase counters, e.g. ``add(files_loaded=3, rows_loaded=120)``."""
        with self._lock:
            for name, value in counts.items():
                setattr(self._state, name, getattr(self._state, name) + value)

    def snapshot(self) -> Progress:
        with self._lock:
            return self._state.model_copy()

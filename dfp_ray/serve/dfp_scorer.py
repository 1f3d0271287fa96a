"""The scorer: holds users (model resolution + same-day history) and scores their records.

:class:`Scorer` is the logic shared by the Serve deployment (:mod:`.dfp_deployment`, where
Serve's model multiplexing holds the users and routes each user's calls to the replica
holding it) and :class:`LocalScorer` (an in-process LRU of users, for the app under a plain
ASGI server and for the benchmark's library figures). A held user is a
:class:`~.dfp_scoring.UserSlot`, addressed by :func:`model_id` ``dfp:<source>:<user>``.

Blocking work (registry queries, model loads, pandas and torch) runs in a worker thread, so
the replica's event loop keeps answering; scoring one source is serialised per process
(histories are read and written), which on a replica of one CPU costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd

from .config import DfpServiceConfig
from .dfp_fast import MappedRows
from .dfp_scoring import POS, SourceRuntime, UserSlot, _event_ids

log = logging.getLogger(__name__)

ID_PREFIX = "dfp:"


def model_id(source: str, user: str) -> str:
    """The multiplexed model id of a user: ``dfp:<source>:<user>`` (source names hold no ':')."""
    return f"{ID_PREFIX}{source}:{user}"


def parse_model_id(mid: str) -> tuple[str, str]:
    if not mid.startswith(ID_PREFIX) or mid.count(":") < 2:
        raise ValueError(f"not a DFP model id: {mid!r} (expected dfp:<source>:<user>)")
    source, user = mid[len(ID_PREFIX):].split(":", 1)
    return source, user


class UnknownSourceError(KeyError):
    pass


def freeze_heap() -> None:
    """Move every object alive now (imports, configs, the app) out of the garbage collector's
    view. A scoring call allocates many small objects (parsed records, answer dicts), which
    triggers full collections; each one walked the whole heap of a replica (Ray, torch, MLflow:
    ~600k objects) and cost more than building the answer (measured: the answer of 3,200
    records 246 -> 66 ms CPU). Called once when a replica has started."""
    import gc

    gc.collect()
    gc.freeze()


class Scorer:
    """Score records of held users; subclasses say how users are held (:meth:`get_slot`)."""

    def __init__(self, service: DfpServiceConfig, replica_id: str) -> None:
        self.service = service
        self.replica_id = replica_id
        self._runtimes: dict[str, SourceRuntime] = {}
        self._runtimes_lock = threading.Lock()  # one runtime (one history lock) per source, whichever thread asks
        self.held: set[str] = set()  # model ids of the slots this process holds
        self._set_threads()

    @staticmethod
    def _set_threads() -> None:
        """Torch threads = the CPUs this process may use (a replica's num_cpus is its affinity)."""
        import os

        import torch

        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        if torch.get_num_threads() > cpus:
            torch.set_num_threads(max(1, cpus))

    # ------------------------------------------------------------------ sources and slots
    def runtime(self, source: str) -> SourceRuntime:
        rt = self._runtimes.get(source)
        if rt is None:
            cfg = self.service.sources.get(source)
            if cfg is None:
                raise UnknownSourceError(source)
            with self._runtimes_lock:
                rt = self._runtimes.get(source)
                if rt is None:
                    rt = SourceRuntime(source, cfg, self.service, max_models=self.service.max_models_per_replica + 1)
                    self._runtimes[source] = rt
        return rt

    async def get_slot(self, mid: str) -> UserSlot:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_slot(self, mid: str) -> UserSlot:
        """Resolve a user's model and make its (empty-history) slot. Blocking."""
        source, user = parse_model_id(mid)
        rt = self.runtime(source)
        slot = UserSlot(source, user, rt.resolve(user), self.service.history_rows_per_user)
        self.held.add(mid)

        def release(s: UserSlot, _mid: str = mid, _rt: SourceRuntime = rt) -> None:
            self.held.discard(_mid)
            _rt.release(s.user)

        slot.on_release = release
        return slot

    async def load_slot(self, mid: str) -> UserSlot:
        return await asyncio.to_thread(self.new_slot, mid)

    async def _slots(self, rt: SourceRuntime, users: list[str]) -> tuple[dict[str, UserSlot], dict[str, str]]:
        """The users' slots, loading new ones (one bulk registry lookup first) and refreshing due
        ones; users whose slot could not be loaded (registry down) are returned apart, with why."""
        source = rt.name
        new = [u for u in users if model_id(source, u) not in self.held]
        if len(new) > 1:
            await asyncio.to_thread(rt.prefetch, new)
        slots: dict[str, UserSlot] = {}
        failed: dict[str, str] = {}
        for u in users:
            try:
                slots[u] = await self.get_slot(model_id(source, u))
            except Exception as exc:  # noqa: BLE001 - this user only
                failed[u] = f"the model of this user could not be resolved: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        due = [s for s in slots.values() if not s.refreshing and now - s.resolution.checked >= self.service.refresh_s]
        if due:
            for s in due:
                s.refreshing = True
            try:
                await asyncio.to_thread(self._refresh, rt, due)
            finally:
                for s in due:
                    s.refreshing = False
        return slots, failed

    @staticmethod
    def _refresh(rt: SourceRuntime, slots: list[UserSlot]) -> None:
        """Re-resolve the slots' models (a newer version, a model of the user's own, a new generic)."""
        if len(slots) > 1:
            rt.prefetch([s.user for s in slots])
        for s in slots:
            try:
                s.resolution = rt.resolve(s.user)
            except Exception as exc:  # noqa: BLE001 - the registry is down: keep scoring with what we have
                log.warning("refreshing the model of %s/%s failed, keeping %s: %s", rt.name, s.user,
                            s.resolution.ref.label if s.resolution.ref else "none", exc)
                s.resolution.checked = time.monotonic()

    # ------------------------------------------------------------------ calls
    async def score(self, source: str, mapped: pd.DataFrame | MappedRows) -> pd.DataFrame | list[dict[str, Any]]:
        """Score mapped rows (any users of ``source``); one result row per input row.

        A frame (the pandas path) gives a frame; :class:`~.dfp_fast.MappedRows` (the fast
        path) give parts as arrays (see :data:`.dfp_scoring.Part`)."""
        rt = self.runtime(source)
        if isinstance(mapped, MappedRows):
            return await self._score_rows(rt, mapped)
        if mapped.empty:
            return pd.DataFrame({POS: pd.Series(dtype="int64")})
        user_col = rt.schema.user_column
        users = list(dict.fromkeys(mapped[user_col].tolist()))
        slots, failed = await self._slots(rt, users)
        if failed:
            rows = mapped[mapped[user_col].isin(list(failed))]
            mapped = mapped[~mapped[user_col].isin(list(failed))]
            errors = pd.DataFrame({POS: rows[POS].to_numpy(), "event_id": _event_ids(rows, rt.schema),
                                   "user": rows[user_col].to_numpy(dtype=object),
                                   "error": rows[user_col].map(failed).to_numpy(dtype=object)})
            if mapped.empty:
                return errors
            scored = await asyncio.to_thread(self._score_locked, rt, mapped, slots)
            return pd.concat([scored, errors], ignore_index=True)
        return await asyncio.to_thread(self._score_locked, rt, mapped, slots)

    async def _score_rows(self, rt: SourceRuntime, rows: MappedRows) -> list[dict[str, Any]]:
        users = rows.columns[rt.schema.user_column]
        slots, failed = await self._slots(rt, list(dict.fromkeys(users)))
        parts: list[dict[str, Any]] = []
        if failed:
            bad = [i for i, u in enumerate(users) if u in failed]
            parts.append(_rows_error(rt, rows, bad, [failed[users[i]] for i in bad]))
            rows = rows.take([i for i, u in enumerate(users) if u not in failed])
        if len(rows):
            parts += await asyncio.to_thread(self._score_rows_locked, rt, rows, slots)
        return parts

    @staticmethod
    def _score_rows_locked(rt: SourceRuntime, rows: MappedRows, slots: dict[str, UserSlot]) -> list[Any]:
        with rt.lock:
            res = rt.score_fast(rows, slots)
            if res is None:  # a model with features the fast path does not compute
                return [rt.score(rows.to_frame(rt.schema), slots)]
        parts: list[Any] = [res.cols] if res.cols else []
        if res.failed_rows:
            users = rows.columns[rt.schema.user_column]
            parts.append(_rows_error(rt, rows, res.failed_rows, [res.failed[users[i]] for i in res.failed_rows]))
        return parts

    @staticmethod
    def _score_locked(rt: SourceRuntime, mapped: pd.DataFrame, slots: dict[str, UserSlot]) -> pd.DataFrame:
        with rt.lock:
            return rt.score(mapped, slots)

    async def describe(self, source: str, user: str) -> dict[str, Any]:
        """Which model (and version) scores ``user`` here, and why."""
        rt = self.runtime(source)
        slots, failed = await self._slots(rt, [user])
        if user in failed:
            raise LookupError(failed[user])
        slot = slots[user]
        return {**slot.resolution.describe(), "source": source, "replica": self.replica_id,
                "history_rows": slot.history_rows, "refresh_s": self.service.refresh_s,
                "checked_s_ago": round(time.monotonic() - slot.resolution.checked, 3)}

    async def stats(self, source: str) -> dict[str, Any]:
        rt = self.runtime(source)
        prefix = model_id(source, "")
        return {"source": source, "replica": self.replica_id,
                "held_users": sum(1 for m in list(self.held) if m.startswith(prefix)),
                "held_users_all_sources": len(self.held),
                "max_models_per_replica": self.service.max_models_per_replica,
                "models_loaded": len(rt.cache), "model_loads": rt.cache.loads}


def _rows_error(rt: SourceRuntime, rows: MappedRows, idx: list[int], messages: list[str]) -> dict[str, Any]:
    """Error rows of :class:`MappedRows` positions ``idx`` as a part (see :data:`.dfp_scoring.Part`)."""
    eid = rt.schema.event_id_column
    return {POS: np.asarray([rows.pos[i] for i in idx], dtype=np.int64),
            "event_id": [rows.columns[eid][i] for i in idx] if eid else [None] * len(idx),
            "user": [rows.columns[rt.schema.user_column][i] for i in idx], "error": messages}


class LocalScorer(Scorer):
    """A scorer in this process: users held in an LRU of ``max_models_per_replica`` (no Serve)."""

    def __init__(self, service: DfpServiceConfig, replica_id: str = "local") -> None:
        super().__init__(service, replica_id)
        self._slots_lru: OrderedDict[str, UserSlot] = OrderedDict()
        self._loading = asyncio.Lock()

    async def get_slot(self, mid: str) -> UserSlot:
        slot = self._slots_lru.get(mid)
        if slot is not None:
            self._slots_lru.move_to_end(mid)
            return slot
        async with self._loading:
            slot = self._slots_lru.get(mid)
            if slot is None:
                while len(self._slots_lru) >= self.service.max_models_per_replica:
                    _, old = self._slots_lru.popitem(last=False)
                    old.__del__()  # as Serve does on unload
                slot = await self.load_slot(mid)
                self._slots_lru[mid] = slot
            return slot

"""The ingress side of DFP scoring: map a request's records, send each user's rows to the
scorer that holds the user, put the answers back in request order.

* :class:`Coalescer` - requests of one source that arrive while a scoring call runs are
  mapped and scored together in the next call (no waiting when the service is idle: a lone
  request starts at once). A scoring call has a fixed cost of pandas and torch calls of a few
  milliseconds whatever its size, so under load this is what keeps records/s up.
* :class:`HandleBackend` - the scorer deployment through its handle. With one scorer replica
  a call carries all users of the batch (``multiplexed_model_id`` of the first; every user is
  still held by the multiplexer of that replica); with more, one call per user, routed by its
  multiplexed model id to the replica holding it.
* :class:`LocalBackend` - a :class:`~.dfp_scorer.LocalScorer` in this process (the app under a
  plain ASGI server; the benchmark's library figures).
* :class:`DfpIngress` - ties them together for the routes (:mod:`.dfp_routes`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pandas as pd

from .config import DfpServiceConfig
from .dfp_fast import MappedRows
from .dfp_scorer import LocalScorer, model_id
from .dfp_scoring import POS, Part, SourceRuntime, _event_ids, record_error, result_records

log = logging.getLogger(__name__)


class ScorerUnavailableError(RuntimeError):
    """No scoring call of a request succeeded (the scorer deployment is down or restarting)."""


class Coalescer:
    """Batch concurrent submissions: whatever queued while a call ran goes into the next call.

    At most ``max_in_flight`` calls run at once (mapping one batch overlaps scoring the
    previous one); a call takes queued submissions in order up to ``max_records`` records
    (a larger submission goes alone)."""

    def __init__(self, work: Callable[[list[list[Any]]], Awaitable[list[Any]]], max_records: int,
                 max_in_flight: int = 2) -> None:
        self.work = work
        self.max_records = max_records
        self.max_in_flight = max_in_flight
        self._queue: collections.deque[tuple[list[Any], asyncio.Future]] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0  # scoring calls made (tests and the benchmark read it)

    async def submit(self, records: list[Any]) -> Any:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((records, fut))
        if self._running < self.max_in_flight:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[tuple[list[Any], asyncio.Future]] = []
                n = 0
                while self._queue and (not batch or n + len(self._queue[0][0]) <= self.max_records):
                    item = self._queue.popleft()
                    if item[1].done():  # its client went away
                        continue
                    batch.append(item)
                    n += len(item[0])
                if not batch:
                    continue
                self.calls += 1
                try:
                    answers = await self.work([recs for recs, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), answer in zip(batch, answers, strict=True):
                    if not fut.done():
                        fut.set_result(answer)
        finally:
            self._running -= 1


def _error_rows(part: pd.DataFrame | MappedRows, runtime: SourceRuntime, message: str) -> Part:
    s = runtime.schema
    if isinstance(part, MappedRows):
        eid = s.event_id_column
        return {POS: np.asarray(part.pos, dtype=np.int64), "event_id": part.columns[eid] if eid else [None] * len(part),
                "user": part.columns[s.user_column], "error": [message] * len(part)}
    return pd.DataFrame({POS: part[POS].to_numpy(), "event_id": _event_ids(part, s),
                         "user": part[s.user_column].to_numpy(dtype=object),
                         "error": np.full(len(part), message, dtype=object)})


class HandleBackend:
    """The scorer deployment, through its handle (see the module docstring)."""

    def __init__(self, handle: Any, bundled: bool) -> None:
        self.handle = handle
        self.bundled = bundled

    def _call(self, source: str, user: str) -> Any:
        return self.handle.options(multiplexed_model_id=model_id(source, user))

    async def score(self, runtime: SourceRuntime, mapped: pd.DataFrame | MappedRows) -> list[Part]:
        user_col = runtime.schema.user_column
        if len(mapped) == 0:
            return []
        parts: list[tuple[str, Any]]
        if isinstance(mapped, MappedRows):
            users = mapped.columns[user_col]
            if self.bundled:
                parts = [(users[0], mapped)]
            else:
                by: dict[str, list[int]] = {}
                for i, u in enumerate(users):
                    by.setdefault(u, []).append(i)
                parts = [(u, mapped.take(idx)) for u, idx in by.items()]
        elif self.bundled:
            parts = [(mapped[user_col].iloc[0], mapped)]
        else:
            parts = [(u, g) for u, g in mapped.groupby(user_col, sort=False)]
        answers = await asyncio.gather(*[self._call(runtime.name, u).score.remote(runtime.name, g) for u, g in parts],
                                       return_exceptions=True)
        out, failures = [], 0
        for (user, part), answer in zip(parts, answers, strict=True):
            if isinstance(answer, BaseException):
                failures += 1
                log.warning("scoring %d records of %s (%s) failed: %r", len(part), runtime.name, user, answer)
                out.append(_error_rows(part, runtime, f"the scorer failed on this user's records "
                                       f"({type(answer).__name__}); send them again"))
            elif isinstance(answer, list):
                out.extend(answer)
            else:
                out.append(answer)
        if failures == len(parts):
            raise ScorerUnavailableError(f"the scorer deployment did not answer ({answers[0]!r:.200})")
        return out

    async def describe(self, source: str, user: str) -> dict[str, Any]:
        return await self._call(source, user).describe.remote(source, user)

    async def stats(self, source: str) -> dict[str, Any]:
        return await self.handle.stats.remote(source)


class LocalBackend:
    """A scorer in this process (no Serve): same code, users in a local LRU."""

    def __init__(self, service: DfpServiceConfig) -> None:
        self.scorer = LocalScorer(service)

    async def score(self, runtime: SourceRuntime, mapped: pd.DataFrame | MappedRows) -> list[Part]:
        if len(mapped) == 0:
            return []
        answer = await self.scorer.score(runtime.name, mapped)
        return answer if isinstance(answer, list) else [answer]

    async def describe(self, source: str, user: str) -> dict[str, Any]:
        return await self.scorer.describe(source, user)

    async def stats(self, source: str) -> dict[str, Any]:
        return await self.scorer.stats(source)


class DfpIngress:
    """What the routes call: known sources, scoring requests (coalesced per source), model info."""

    def __init__(self, service: DfpServiceConfig, backend: HandleBackend | LocalBackend) -> None:
        self.service = service
        self.backend = backend
        self._runtimes: dict[str, SourceRuntime] = {}
        self._coalescers: dict[str, Coalescer] = {}
        self.requests: dict[str, int] = {}  # this ingress replica's scoring requests and records, per source
        self.records: dict[str, int] = {}

    @property
    def sources(self) -> list[str]:
        return sorted(self.service.sources)

    def runtime(self, source: str) -> SourceRuntime:
        """The source's mapping side (schema, pipeline config); KeyError when unknown."""
        rt = self._runtimes.get(source)
        if rt is None:
            rt = SourceRuntime(source, self.service.sources[source], self.service, max_models=1)
            self._runtimes[source] = rt
        return rt

    async def score_request(self, source: str, records: list[Any]) -> dict[str, Any]:
        """The answer body for one request's records (scored ones and per-record errors, in order)."""
        rt = self.runtime(source)
        co = self._coalescers.get(source)
        if co is None:
            co = self._coalescers[source] = Coalescer(
                lambda batch, _rt=rt: self._work(_rt, batch), self.service.max_batch_records)
        self.requests[source] = self.requests.get(source, 0) + 1
        self.records[source] = self.records.get(source, 0) + len(records)
        results: list[dict[str, Any]] = await co.submit(records) if records else []
        errors = sum(1 for r in results if r.get("error"))
        return {"source": source, "records": len(results), "scored": len(results) - errors, "errors": errors,
                "detections": sum(1 for r in results if r.get("detection")), "results": results}

    async def _work(self, rt: SourceRuntime, requests: list[list[Any]]) -> list[list[dict[str, Any]]]:
        """Map all requests' records at once, score them, split the answers back per request."""
        flat = [rec for recs in requests for rec in recs]
        mapped, errors = await asyncio.to_thread(rt.map_records, flat)
        parts = await self.backend.score(rt, mapped)
        return await asyncio.to_thread(_split_answers, parts, errors, [len(r) for r in requests])

    async def describe(self, source: str, user: str) -> dict[str, Any]:
        self.runtime(source)
        return await self.backend.describe(source, user)

    async def stats(self, source: str) -> dict[str, Any]:
        self.runtime(source)
        co = self._coalescers.get(source)
        calls = co.calls if co is not None else 0
        return {**await self.backend.stats(source),
                "ingress": {"requests": self.requests.get(source, 0), "records": self.records.get(source, 0),
                            "scoring_calls": calls}}


def _split_answers(parts: list[Part], errors: dict[int, dict[str, Any]], sizes: list[int]) -> list[list[dict]]:
    answers = result_records(parts, errors, sum(sizes))
    out, start = [], 0
    for size in sizes:
        chunk = answers[start:start + size]
        if start:
            for rec in chunk:
                rec["index"] -= start
        out.append(chunk)
        start += size
    return out


__all__ = ["Coalescer", "DfpIngress", "HandleBackend", "LocalBackend", "ScorerUnavailableError", "record_error"]
